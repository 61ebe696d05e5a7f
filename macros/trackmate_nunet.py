#@ ImagePlus imp
#@ String (label="NU-Net model", value="nunet-v11") model
#@ Double (label="Nucleus radius (calibrated units)", value=2.5) radius
#@ Double (label="LoG threshold on NU-Net output", value=0.1) threshold
# NU-Net as TrackMate preprocessing: filter a time-lapse hyperstack, then detect with LoG.
#
# Choosing TrackMate's LoG settings on NU-Net's output:
# - RADIUS: the nucleus radius in calibrated units, as on the raw image: NU-Net keeps object
#   sizes (it does not blur like a DoG), so no correction for filter width is needed.
# - THRESHOLD: NU-Net's output is in [0, 1] (background near 0, nuclei towards 1) whatever the
#   raw intensities, so one threshold transfers between acquisitions. Start around 0.1 and check
#   with the detector preview; raise it if dim debris is detected.
# - DO_MEDIAN_FILTERING: off (NU-Net already removed noise and background).
# TrackMate needs time points as frames, not slices: set frames_are_slices = True below for a
# time-lapse that opened as a Z-stack.
from ij import IJ, WindowManager

frames_are_slices = False


def as_time_lapse(image):
    """Turn a stack whose slices are time points into frames (TrackMate tracks over frames)."""
    if image.getNFrames() == 1 and image.getNSlices() > 1:
        image.setDimensions(image.getNChannels(), 1, image.getNSlices())
        image.setOpenAsHyperStack(True)
    return image


def prepare(image, model_name):
    """Filter every plane with NU-Net; return the new calibrated hyperstack "NU-Net of <title>"."""
    before = set(WindowManager.getIDList() or [])
    IJ.run(image, "NU-Net Filter", "model=[%s] w=0 channels=all tile=0 device=auto output=32-bit" % model_name)
    created = [i for i in (WindowManager.getIDList() or []) if i not in before]
    if not created:
        raise RuntimeError("NU-Net Filter produced no image")
    return WindowManager.getImage(created[-1])


def detect_and_track(filtered, radius, threshold):
    """Hand the filtered hyperstack to TrackMate's LoG detector and a simple LAP tracker."""
    from fiji.plugin.trackmate import Model, Settings, TrackMate
    from fiji.plugin.trackmate.detection import LogDetectorFactory
    from fiji.plugin.trackmate.tracking.jaqaman import SparseLAPTrackerFactory

    settings = Settings(filtered)
    settings.detectorFactory = LogDetectorFactory()
    settings.detectorSettings = {"DO_SUBPIXEL_LOCALIZATION": True, "RADIUS": radius, "TARGET_CHANNEL": 1,
                                 "THRESHOLD": threshold, "DO_MEDIAN_FILTERING": False}
    settings.trackerFactory = SparseLAPTrackerFactory()
    settings.trackerSettings = settings.trackerFactory.getDefaultSettings()
    settings.addAllAnalyzers()
    trackmate = TrackMate(Model(), settings)
    if not trackmate.checkInput() or not trackmate.process():
        raise RuntimeError(str(trackmate.getErrorMessage()))
    model = trackmate.getModel()
    print("TrackMate: %d spots, %d tracks" % (model.getSpots().getNSpots(True),
                                              model.getTrackModel().nTracks(True)))
    return model


if frames_are_slices:
    imp = as_time_lapse(imp)
result = prepare(imp, model)
print("NU-Net: %s, %d frames x %d slices x %d channels, pixel %.4g %s" % (
    result.getTitle(), result.getNFrames(), result.getNSlices(), result.getNChannels(),
    result.getCalibration().pixelWidth, result.getCalibration().getUnit()))
try:
    detect_and_track(result, radius, threshold)
except ImportError:
    print("TrackMate is not installed: the filtered hyperstack is ready for it.")
