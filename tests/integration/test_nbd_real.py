"""qemu-nbd, the path for hosts with the nbd module but no FUSE."""

from __future__ import annotations

import pytest

from tests.conftest import CopyImage
from vmcraft.disks import loop, nbd

pytestmark = [
    pytest.mark.root,
    pytest.mark.usefixtures("leak_check"),
    pytest.mark.skipif(not nbd.nbd_available(), reason="this host has no nbd module"),
]


def test_qcow2_through_nbd_and_loop(image_copy: CopyImage) -> None:
    connection = nbd.connect(image_copy("qcow2"), "qcow2", readonly=True)
    try:
        device = loop.attach(connection.device, readonly=True)
        try:
            assert [p.name for p in device.partitions()] == [
                f"{device.name}p1",
                f"{device.name}p2",
            ]
        finally:
            device.detach()
    finally:
        connection.disconnect()
