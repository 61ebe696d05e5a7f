# NU-Net Filter: filters the current image with NU-Net (Plugins > NU-Net > NU-Net Filter).
#   run("NU-Net Filter", "model=nunet-v11 w=0 channels=all tile=0 device=auto output=32-bit radius=auto");
# The options are documented in nunetplugin.py beside this file; installed by `nunet fiji install`.
import os
import sys

from ij import IJ

_here = os.path.join(IJ.getDirectory("plugins"), "NU-Net")
if _here not in sys.path:
    sys.path.append(_here)
import nunetplugin

nunetplugin.main()
