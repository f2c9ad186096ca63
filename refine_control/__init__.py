"""refine-control: distil a ControlNet teacher into a small student, export it and serve it on the device."""

__version__ = "0.1.0"
