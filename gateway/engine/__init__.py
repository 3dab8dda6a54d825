"""The alert engine, pure: payload formats, rules, the sensor board, the alert lifecycle.

Time is a parameter: nothing here reads a clock, does I/O or needs an event loop.
"""
