"""The enhanced chroot: pseudo-filesystems, safe guest paths, running commands."""
