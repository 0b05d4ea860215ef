"""Disk images: formats, loop devices, qemu-storage-daemon exports, guest device names."""
