import ij.plugin.PlugInInterpreter;
import org.python.util.PythonInterpreter;

/**
 * Runs Python (.py) plugins in a plain ImageJ 1 with Jython.
 *
 * ImageJ 1 looks for a plugin class named "Jython" to run .py plugins and otherwise offers to
 * download one; Fiji ships its own script runner and must not get this class. Installed by
 * "nunet fiji install" into plugins/jars/ of a plain ImageJ, next to a jython.jar.
 */
public class Jython extends PlugInInterpreter {
    private static PythonInterpreter shared;

    @Override
    public String run(String script, String arg) {
        synchronized (Jython.class) {
            if (shared == null) {
                shared = new PythonInterpreter();
            }
            shared.exec(script);
        }
        return null;
    }

    @Override
    public String getReturnValue() {
        return "";
    }

    @Override
    public String getName() {
        return "Jython";
    }

    @Override
    public String getImports() {
        return "";
    }

    @Override
    public String getVersion() {
        return "2.7";
    }
}
