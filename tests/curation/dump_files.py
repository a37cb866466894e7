"""What the dump tests build their SA-1B tars, JourneyDB folders and ImageNet trees from."""

import io
import json
import tarfile

from lumos.curation.sample import encode, synthetic_image

CORRUPT = encode(synthetic_image(800, 600, 99))[:3000]  # a JPEG cut short: fails to decode


def jpeg(w, h, seed):
    return encode(synthetic_image(w, h, seed))


def add(tar, name, data):
    """`data` into the open tarfile `tar` as the member `name`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sidecar(w, h):
    """An SA-1B image's .json sidecar with no annotations."""
    return json.dumps({"image": {"image_id": 1, "width": w, "height": h}, "annotations": []}).encode()
