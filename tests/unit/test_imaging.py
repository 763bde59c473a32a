import cv2
import numpy as np
import pytest
from conftest import jpeg

from flower_pipeline.imaging import ResizeSpec, SkipImage, decode, fit, image_dimensions, resize_all


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_header_dimensions_for_common_formats():
    image = np.zeros((30, 50, 3), np.uint8)
    assert image_dimensions(jpeg(50, 30)) == (50, 30)
    assert image_dimensions(_png(image)) == (50, 30)
    assert image_dimensions(cv2.imencode(".bmp", image)[1].tobytes()) == (50, 30)


@pytest.mark.parametrize("mode, channels", [("color", 3), ("gray", 1)])
@pytest.mark.parametrize("crop", ["center", "pad", "stretch"])
def test_every_mode_and_crop_gives_the_target_shape(mode, channels, crop):
    spec = ResizeSpec(size=32, mode=mode, crop=crop)
    out = fit(decode(jpeg(300, 200), spec), spec)
    assert out.shape == (32, 32, channels) and out.dtype == np.uint8


def test_reduced_jpeg_decoding_is_used_for_small_targets():
    spec = ResizeSpec(size=64)
    assert decode(jpeg(600, 500), spec).shape[:2] == (63, 75)  # 1/8 scale (rounded up): 63 >= 0.9 × 64
    assert decode(jpeg(600, 500), ResizeSpec(size=64, decode_slack=1.0)).shape[:2] == (125, 150)  # 1/4 scale


def test_color_order_is_rgb():
    blue = np.zeros((40, 40, 3), np.uint8)
    blue[:, :, 0] = 255  # OpenCV is BGR: this is pure blue
    out = fit(decode(_png(blue), ResizeSpec(size=16)), ResizeSpec(size=16))
    assert out[8, 8].tolist() == [0, 0, 255]


def test_grayscale_alpha_and_16bit_inputs_are_converted():
    spec = ResizeSpec(size=16)
    gray = np.full((40, 40), 100, np.uint8)
    assert fit(decode(_png(gray), spec), spec)[8, 8].tolist() == [100, 100, 100]
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :, 2] = 255  # red, fully transparent on the left, opaque on the right
    rgba[:, 20:, 3] = 255
    out = fit(decode(_png(rgba), spec), spec)
    assert out[8, 1].tolist() == [255, 255, 255] and out[8, 14].tolist() == [255, 0, 0]
    deep = np.full((40, 40, 3), 65535 // 2, np.uint16)
    assert abs(int(fit(decode(_png(deep), spec), spec)[8, 8, 0]) - 127) <= 1
    assert fit(decode(_png(gray), ResizeSpec(size=16, mode="gray")), ResizeSpec(size=16, mode="gray")).shape[2] == 1


def _absurd_png() -> bytes:
    data = bytearray(_png(np.zeros((20, 20, 3), np.uint8)))
    data[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a decodable"),
    (jpeg(200, 200)[:300], "not a decodable"),
    (jpeg(4, 4), "too small"),
    (jpeg(1000, 40), "aspect ratio"),
    (_absurd_png(), "header claims 60000x60000"),
])
def test_bad_images_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipImage, match=reason):
        decode(data, ResizeSpec())


def test_resize_all_reports_skips_by_name_and_keeps_the_rest(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg(120, 100))
    bad.write_bytes(b"not an image")
    ticks = []
    result = resize_all([good, bad, good], ResizeSpec(size=32), progress=lambda d, t: ticks.append((d, t)))
    assert result.images.shape == (2, 32, 32, 3) and result.kept == [0, 2]
    assert set(result.skipped) == {"bad.jpg"} and ticks[-1] == (3, 3)
