"""The sandbox every guest command runs in on attached disks: bubblewrap, a syscall filter."""
