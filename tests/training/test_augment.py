"""The channel re-delivery the trainer applies before the phone-photo augmentations."""

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import CHANNEL_CODECS, ChannelDelivery, phone_photo_augment


@pytest.fixture
def photo() -> torch.Tensor:
    """A smooth gradient with a sharp-edged block: codecs change its pixels, but not beyond recognition."""
    y, x = np.mgrid[0:240, 0:320]
    pixels = np.stack([x * 0.8, y, (x + y) * 0.45], axis=-1).astype(np.uint8)
    pixels[80:160, 100:220] = (250, 20, 20)
    return torch.from_numpy(pixels).permute(2, 0, 1)


@pytest.mark.parametrize("codec", CHANNEL_CODECS, ids=lambda c: c.__name__)
def test_every_codec_changes_the_pixels_a_little_and_keeps_rgb(photo, codec):
    im = Image.fromarray(photo.permute(1, 2, 0).numpy())
    out = codec(im, 40)
    assert out.mode == "RGB"
    if out.size == im.size:
        diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(im)).mean()
        assert 0 < diff < 20
    else:  # the web size: a smaller photo of the same shape
        assert min(out.size) < min(im.size) and abs(out.width / out.height - im.width / im.height) < 0.02


def test_channel_delivery_is_off_at_zero_and_reseeded_by_torch(photo):
    assert ChannelDelivery(0.0)(photo) is photo
    torch.manual_seed(3)
    first = ChannelDelivery(1.0)(photo)
    torch.manual_seed(3)
    again = ChannelDelivery(1.0)(photo)
    assert first.dtype == torch.uint8 and first.shape[0] == 3
    assert torch.equal(first, again)  # the epoch seed decides the channel: resume sees the same photos


def test_augmentation_with_channels_gives_the_training_size(photo):
    torch.manual_seed(0)
    for _ in range(12):  # every codec, the web size included, ends at the epoch's resolution
        assert phone_photo_augment(64, channel_p=1.0)(photo).shape == (3, 64, 64)
