"""Tools for testing what ostreefs builds: a tiny bootable OS and a QEMU boot harness.

Build and deployment tools use them to check that a deployment really boots:

- :mod:`.assets`: Debian kernel, ostree-boot and busybox-static from the package
  registry, unpacked once into a cache (``tools/boot-assets`` pre-fetches them);
- :mod:`.initramfs`: an initramfs that runs Debian's real ``ostree-prepare-root``;
- :mod:`.tinyos`: the OS tree to commit, whose init reports which deployment booted;
- :mod:`.qemu`: disk image of a sysroot and a boot of one of its BLS entries;
- :mod:`.syslinux`: the same through a real bootloader (SYSLINUX);
- :mod:`.demo_boot`: a sysroot driven through ``ostreefs`` command lines, and the demo.
"""
