# The body of the "NU-Net Filter" command, imported once per Fiji session by NU-Net_Filter.py
# (a module is compiled once and cached; the command script itself is recompiled at every call).
#
# Macro syntax (what the Macro Recorder writes):
#   run("NU-Net Filter", "model=nunet-v11 w=0 channels=all tile=0 device=auto output=32-bit radius=auto");
#   model     registered model name or path to a TorchScript .pt file (empty: nunet's default)
#   w         filtering strength; 0 uses `model`, otherwise blends the two registered models around w
#   channels  "all" or 1-based channel numbers, e.g. "1" or "1,3"
#   tile      tile planes larger than this many pixels (0: automatic)
#   device    auto, cpu, cuda or mps
#   output    32-bit ([0, 1]), 16-bit or 8-bit (scaled to the full range)
#   replace   (flag) replace the current image instead of creating "NU-Net of <title>"
#   invert    (flag) dark nuclei on a bright background (THG, bright-field): flip before filtering
#   augment   (flag) test-time augmentation: average the 8 rotations and mirror images (8x the time)
#   radius    typical nucleus radius: auto (estimated once for the image), pixels (12), a length in the
#             image's calibrated unit (3.5um), or off; the image is filtered at the model's scale
#
# Inside a Python session that called nunet.fiji.register() the filter runs in-process.
# Otherwise the plugin starts one `python -m nunet serve` worker (the Python recorded by
# `nunet fiji install`) and reuses it for the rest of the session.
# Jython 2.7: no f-strings; Java exceptions are caught as java.lang.Throwable.

import re

from ij import IJ, ImagePlus, ImageStack, Macro, WindowManager
from ij.gui import GenericDialog
from ij.macro import Interpreter
from ij.process import FloatProcessor
from java.io import File, FileInputStream
from java.lang import ProcessBuilder, Runnable, Runtime, String, System, Thread, Throwable
from java.nio import ByteBuffer, ByteOrder
from java.util import ArrayList, HashMap, Properties
from jarray import zeros

TITLE = "NU-Net Filter"
INPROCESS_KEY = "nunet.filter"
WORKER_KEY = "nunet.worker"
ERROR_KEY = "nunet.error"  # the last failure's message, for nunet.fiji.run_macro (headless ImageJ has no Log window)
DEVICES = ["auto", "cpu", "cuda", "mps"]
OUTPUTS = ["32-bit", "16-bit", "8-bit"]


class Failure(Exception):
    """A problem reported to the user (and the running macro) as one line."""


def read_config():
    props = Properties()
    path = File(IJ.getDirectory("plugins"), "NU-Net" + File.separator + "nunet.properties")
    if path.isFile():
        stream = FileInputStream(path)
        try:
            props.load(stream)
        finally:
            stream.close()
    return props


def macro_map():
    """The macro options and the nunet setting each one sets ("" for the plugin's own, replace), as
    'nunet fiji install' wrote them into nunet.properties from nunet.integrations.fiji_install.MACRO_OPTIONS:
    the one list of them."""
    pairs = [p.split(":", 1) for p in read_config().getProperty("macro_map", "").split(",") if ":" in p]
    if not pairs:
        raise Failure("nunet.properties is missing or old: run 'nunet fiji install' for this Fiji again")
    return dict(pairs)


def check_option_keys(options):
    """Reject misspelt macro options (GenericDialog would silently ignore them)."""
    if options is None:
        return
    known = sorted(macro_map())
    stripped = re.sub(r"\[[^\]]*\]", "", options)
    for token in stripped.split():
        key = token.split("=")[0]
        if key not in known:
            raise Failure("unknown option '%s' (known: %s)" % (key, ", ".join(known)))


def ask_options(imp):
    check_option_keys(Macro.getOptions())
    gd = GenericDialog(TITLE)
    gd.addStringField("model", read_config().getProperty("default_model", ""), 18)
    gd.addNumericField("w", 0, 1, 6, "(0: the model itself; else a strength in its family)")
    gd.addStringField("channels", "all", 8)
    gd.addNumericField("tile", 0, 0, 6, "px (0: automatic)")
    gd.addChoice("device", DEVICES, "auto")
    gd.addChoice("output", OUTPUTS, "32-bit")
    gd.addCheckbox("replace", False)
    gd.addCheckbox("invert", False)
    gd.addCheckbox("augment", False)
    gd.addStringField("radius", "auto", 8)
    gd.showDialog()
    if gd.wasCanceled():
        return None
    model = gd.getNextString().strip()
    w = gd.getNextNumber()
    channels_text = gd.getNextString().strip()
    tile = gd.getNextNumber()
    device = gd.getNextChoice()
    output = gd.getNextChoice()
    replace = gd.getNextBoolean()
    invert = gd.getNextBoolean()
    augment = gd.getNextBoolean()
    radius = gd.getNextString().strip() or "auto"
    if gd.invalidNumber() or w != w or w < 0:
        raise Failure("w must be a number >= 0")
    if tile != tile or tile < 0 or tile != int(tile):
        raise Failure("tile must be a whole number >= 0")
    return {"model": model, "w": w, "channels": parse_channels(channels_text, imp.getNChannels()),
            "tile": int(tile), "device": device, "output": output, "replace": replace,
            "invert": invert, "augment": augment, "radius": radius}


def parse_channels(text, count):
    if text.lower() == "all":
        return list(range(count))
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise Failure("channels must be 'all' or numbers like 1,3; got '%s'" % text)
    bad = [n for n in numbers if n < 1 or n > count]
    if bad or not numbers:
        raise Failure("channel %s out of range: the image has %d channel(s), numbered from 1" % (text, count))
    return [n - 1 for n in numbers]


def float_planes(imp, channels):
    """The selected planes as float[] in (T, Z, C) order; RGB becomes luma like nunet.enhance."""
    stack = imp.getStack()
    planes = []
    for t in range(imp.getNFrames()):
        for z in range(imp.getNSlices()):
            for c in channels:
                ip = stack.getProcessor(imp.getStackIndex(c + 1, z + 1, t + 1))
                if imp.getType() == ImagePlus.COLOR_RGB:
                    ip = ip.duplicate()
                    ip.setRGBWeights(0.299, 0.587, 0.114)
                planes.append(ip.convertToFloat().getPixels())
    return planes


def request_fields(options, imp):
    """The request's settings, named by macro_map(), and the image's calibration."""
    settings = macro_map()
    values = [("model", options["model"] or None), ("w", options["w"] if options["w"] > 0 else None),
              ("tile", options["tile"] if options["tile"] > 0 else None), ("device", options["device"]),
              ("invert", True if options["invert"] else None),
              ("augment", True if options["augment"] else None), ("radius", options["radius"])]
    calibration = imp.getCalibration()
    return [(settings[key], value) for key, value in values] + [
        ("pixel_width", calibration.pixelWidth), ("unit", calibration.getUnit())]


def filter_inprocess(function, planes, imp, options):
    width, height = imp.getWidth(), imp.getHeight()
    request = HashMap()
    request.put("planes", ArrayList(planes))
    request.put("width", width)
    request.put("height", height)
    for key, value in request_fields(options, imp):
        if value is not None:
            request.put(key, value)
    result = function.apply(request)
    if isinstance(result, basestring):  # nunet.fiji answers an error with its message
        raise Failure(result)
    return list(result)


# ---- the worker ("nunet serve") ---------------------------------------------------------

def json_value(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = unicode(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text + '"'


def read_line(process, stream, deadline):
    chars = []
    while True:
        if stream.available() > 0:
            byte = stream.read()
            if byte == 10:
                return "".join(chars).decode("utf-8")
            chars.append(chr(byte))
        else:
            wait_or_fail(process, deadline)


def read_exact(process, stream, buffer, deadline):
    offset = 0
    while offset < len(buffer):
        available = stream.available()
        if available > 0:
            offset += stream.read(buffer, offset, min(available, len(buffer) - offset))
        else:
            wait_or_fail(process, deadline)


def wait_or_fail(process, deadline):
    if not process.isAlive():
        System.getProperties().remove(WORKER_KEY)
        raise Failure("the NU-Net worker stopped (exit code %d); see %s" % (process.exitValue(), worker_log()))
    if System.currentTimeMillis() > deadline:
        process.destroyForcibly()
        System.getProperties().remove(WORKER_KEY)
        raise Failure("the NU-Net worker did not answer in time and was stopped; see %s" % worker_log())
    Thread.sleep(1)


def worker_log():
    return File(System.getProperty("java.io.tmpdir"), "nunet-worker.log").getPath()


class _Stop(Runnable):
    def __init__(self, process):
        self.process = process

    def run(self):
        self.process.destroy()


def get_worker(config):
    process = System.getProperties().get(WORKER_KEY)
    if process is not None and process.isAlive():
        return process
    python = config.getProperty("python")
    if not python:
        raise Failure("NU-Net is not set up in this Fiji: run 'nunet fiji install %s' in a terminal"
                      % File(IJ.getDirectory("imagej")).getPath())
    builder = ProcessBuilder([python, "-m", "nunet", "serve"])
    builder.redirectError(ProcessBuilder.Redirect.appendTo(File(worker_log())))
    try:
        process = builder.start()
    except Throwable, exc:
        raise Failure("cannot start the NU-Net worker with %s (%s)" % (python, exc.getMessage()))
    deadline = System.currentTimeMillis() + 1000 * int(config.getProperty("startup_timeout", "300"))
    line = read_line(process, process.getInputStream(), deadline)
    if not line.startswith("READY"):
        process.destroy()
        raise Failure("unexpected answer from the NU-Net worker: %s" % line)
    Runtime.getRuntime().addShutdownHook(Thread(_Stop(process)))
    System.getProperties().put(WORKER_KEY, process)
    return process


def filter_worker(config, planes, imp, options):
    width, height = imp.getWidth(), imp.getHeight()
    process = get_worker(config)
    fields = [("op", "filter"), ("planes", len(planes)), ("height", height), ("width", width)]
    header = "{" + ", ".join('"%s": %s' % (k, json_value(v)) for k, v in fields + request_fields(options, imp)) + "}\n"
    out = process.getOutputStream()
    out.write(String(header).getBytes("UTF-8"))
    buffer = ByteBuffer.allocate(4 * width * height).order(ByteOrder.LITTLE_ENDIAN)
    for pixels in planes:
        buffer.clear()
        buffer.asFloatBuffer().put(pixels)
        out.write(buffer.array())
    out.flush()
    deadline = System.currentTimeMillis() + 1000 * int(config.getProperty("timeout", "3600"))
    stream = process.getInputStream()
    answer = read_line(process, stream, deadline)
    if answer.startswith("ERR "):
        raise Failure(answer[4:])
    if not answer.startswith("OK "):
        raise Failure("unexpected answer from the NU-Net worker: %s" % answer)
    results = []
    raw = zeros(4 * width * height, "b")
    for _ in planes:
        read_exact(process, stream, raw, deadline)
        pixels = zeros(width * height, "f")
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(pixels)
        results.append(pixels)
    return results


# ---- building the result ----------------------------------------------------------------

def build_result(imp, results, options):
    width, height = imp.getWidth(), imp.getHeight()
    stack = ImageStack(width, height)
    for pixels in results:
        ip = FloatProcessor(width, height, pixels)
        if options["output"] == "8-bit":
            ip.multiply(255.0)
            ip = ip.convertToByteProcessor(False)
        elif options["output"] == "16-bit":
            ip.multiply(65535.0)
            ip = ip.convertToShortProcessor(False)
        stack.addSlice(ip)
    channels = len(options["channels"])
    if options["replace"]:
        imp.setStack(stack, channels, imp.getNSlices(), imp.getNFrames())
        result = imp
    else:
        result = ImagePlus("NU-Net of " + imp.getTitle(), stack)
        result.setDimensions(channels, imp.getNSlices(), imp.getNFrames())
        result.setCalibration(imp.getCalibration().copy())
        if channels * imp.getNSlices() * imp.getNFrames() > 1 and (imp.isHyperStack() or channels > 1):
            result.setOpenAsHyperStack(True)
    if options["output"] == "32-bit":
        result.setDisplayRange(0.0, 1.0)
    else:
        result.resetDisplayRange()
    return result


def run():
    imp = WindowManager.getCurrentImage()
    if imp is None:
        raise Failure("no image open")
    options = ask_options(imp)
    if options is None:
        return
    planes = float_planes(imp, options["channels"])
    function = System.getProperties().get(INPROCESS_KEY)
    if isinstance(function, basestring):  # nunet.fiji's session is ending (its exit handler)
        raise Failure("the Python session that served this command in-process has ended")
    if function is not None:
        results = filter_inprocess(function, planes, imp, options)
    else:
        results = filter_worker(read_config(), planes, imp, options)
    result = build_result(imp, results, options)
    if result is imp:
        imp.updateAndDraw()
    else:
        result.show()


def fail(message):
    """Log the message; stop the running macro, or show the error when run from the menu."""
    IJ.log(TITLE + ": " + message)
    System.setProperty(ERROR_KEY, TITLE + ": " + message)
    if Interpreter.getInstance() is not None:
        Interpreter.abort()  # stops the macro after this command; no modal dialog
    else:
        IJ.error(TITLE, message)


def main():
    """Entry point of the "NU-Net Filter" command: never lets an exception escape to ImageJ."""
    try:
        run()
    except Failure, exc:
        fail(str(exc))
    except Throwable, exc:
        fail(exc.getClass().getSimpleName() + ": " + str(exc.getMessage()))
