// A typical nucleus-counting macro: Difference of Gaussians, then Find Maxima.
// Headless:  ImageJ -batch dog_pipeline.ijm "input=[/data/cells.tif] output=[/data/cells_dog.tif]"
args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
setBatchMode(true);
open(input);
source = getTitle();

// ---- filtering: DoG with sigmas from the expected nucleus radius (~4 px) ----
run("32-bit");
run("Duplicate...", "title=small duplicate");
run("Gaussian Blur...", "sigma=2 stack");
selectImage(source);
run("Duplicate...", "title=large duplicate");
run("Gaussian Blur...", "sigma=3.2 stack");
imageCalculator("Subtract create 32-bit stack", "small", "large");
// ---- end of filtering ----

filtered = getTitle();
run("Find Maxima...", "prominence=10 output=[Point Selection]");
getSelectionCoordinates(xs, ys);
print("nuclei: " + xs.length);
run("Select None");
selectImage(filtered);
saveAs("Tiff", output);
