"""The package version, read by setup.py and reported by the doctor."""
__version__ = '0.1.0'
