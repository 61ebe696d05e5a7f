// Filter every .tif of a folder with NU-Net (the worker starts once and serves every image).
// Headless:  ImageJ -batch nunet_batch.ijm "input=[/data/in] output=[/data/out] model=nunet-v11"
args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
model = call("ij.Macro.getValue", args, "model", "nunet-v11");
setBatchMode(true);
File.makeDirectory(output);
files = getFileList(input);
count = 0;
for (i = 0; i < files.length; i++) {
    if (!endsWith(toLowerCase(files[i]), ".tif")) continue;
    open(input + File.separator + files[i]);
    run("NU-Net Filter", "model=[" + model + "] output=32-bit");
    saveAs("Tiff", output + File.separator + files[i]);
    close("*");
    count++;
}
print("filtered " + count + " images");
