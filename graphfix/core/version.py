"""graphfix's release number, in one place: the package's `__version__`, its reports and its build (setup.cfg) read
it here, so that no lower package imports the top one for it."""

VERSION = "0.1.0"
