"""cnnkit-example: a template cnnkit plugin (see README.md).

The plugin itself is :mod:`cnnkit_example.plugin`; the compiled kernel is
:mod:`cnnkit_example._mish`, imported by the plugin the first time the Mish variant runs.
"""
__version__ = "0.1.0"
