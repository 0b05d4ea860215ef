"""Every mount vmcraft makes: syscalls, checks, guest filesystems, pseudo-filesystems."""
