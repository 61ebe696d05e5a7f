// The same counting macro as dog_pipeline.ijm, with the DoG lines replaced by one NU-Net call.
// Headless:  ImageJ -batch nunet_pipeline.ijm "input=[/data/cells.tif] output=[/data/cells_nunet.tif] model=nunet-v11"
args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
model = call("ij.Macro.getValue", args, "model", "nunet-v11");
setBatchMode(true);
open(input);

// ---- filtering: NU-Net (output in [0, 1]; background near 0, nuclei towards 1) ----
run("NU-Net Filter", "model=[" + model + "] w=0 channels=all tile=0 device=auto output=32-bit radius=auto");
// ---- end of filtering ----

filtered = getTitle();
run("Find Maxima...", "prominence=0.1 output=[Point Selection]");
getSelectionCoordinates(xs, ys);
print("nuclei: " + xs.length);
run("Select None");
selectImage(filtered);
saveAs("Tiff", output);
