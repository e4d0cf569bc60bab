"""Tools for testing what ostreefs builds: a tiny bootable OS and a QEMU boot harness.

Build and deployment tools use them to check that a deployment really boots.
"""
