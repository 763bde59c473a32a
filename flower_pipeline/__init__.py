"""Oxford flower photos in, trained DCGAN generators out.

The modules at this level are the ML core (plain Python, NumPy, OpenCV and
PyTorch); `flower_pipeline.defs` wires them into Dagster.
"""

__version__ = "0.1.0"
