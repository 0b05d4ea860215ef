"""What operating system a guest holds: os-release, fstab, distro family."""
