#@ File (label="Input folder", style="directory") input_dir
#@ File (label="Output folder", style="directory") output_dir
#@ String (label="Model", value="nunet-v11") model
# Filter every .tif of a folder with NU-Net: the Jython twin of nunet_batch.ijm.
# In Fiji the #@ lines ask for the folders; elsewhere set input_dir, output_dir, model first.
import os

from ij import IJ, WindowManager


def process_folder(input_dir, output_dir, model):
    """Filter each .tif of input_dir into output_dir; return the number of images written."""
    count = 0
    for name in sorted(os.listdir(str(input_dir))):
        if not name.lower().endswith(".tif"):
            continue
        imp = IJ.openImage(os.path.join(str(input_dir), name))
        imp.show()
        before = set(WindowManager.getIDList() or [])
        IJ.run(imp, "NU-Net Filter", "model=[%s] output=32-bit" % model)
        created = [i for i in (WindowManager.getIDList() or []) if i not in before]
        if not created:
            raise RuntimeError("NU-Net Filter failed on %s (see the Log window)" % name)
        result = WindowManager.getImage(created[-1])
        IJ.saveAsTiff(result, os.path.join(str(output_dir), name))
        result.close()
        imp.close()
        count += 1
    return count


print("filtered %d images" % process_folder(input_dir, output_dir, model))
