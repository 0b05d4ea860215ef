"""libguestfs's API on the handle, one module per concern.

Migration scripts written against ``guestfs.GuestFS`` (hyper2kvm's
OfflineFSFix among them) call these with libguestfs's argument order,
return shapes (``python_return_dict=True``) and ``RuntimeError`` on
failure. ``VMCraft`` inherits every mixin; each module keeps its own rows
of the conformance table beside the code (``CALLS``), and
``conformance.py`` joins them into docs/conformance.md.
"""
