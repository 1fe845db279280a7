"""Regenerate the bad-input corpus (one multi-page TIFF per object, 3 channels as pages).

Good objects: good_0.tif, good_1.tif. Each other file is broken in one way; tests/test_bad_inputs.py
says which message each must produce. Run from this folder: python make_corpus.py
"""

import numpy as np
import tifffile

from scip_gpu.demo import make_cell


def main() -> None:
    for i in range(2):
        tifffile.imwrite(f"good_{i}.tif", make_cell(i, min_size=40, max_size=48)[0], photometric="minisblack")
    good = make_cell(7, min_size=40, max_size=48)[0]
    tifffile.imwrite("truncated.tif", good, photometric="minisblack")
    data = open("truncated.tif", "rb").read()
    open("truncated.tif", "wb").write(data[: len(data) // 3])
    open("zero_byte.tif", "wb").close()
    bad = good.astype(np.float32)
    bad[0, 3, 4] = np.nan
    bad[1, 5, 6] = np.inf
    tifffile.imwrite("float_nan_inf.tif", bad, photometric="minisblack")
    tifffile.imwrite("all_zero.tif", np.zeros((3, 40, 40), np.uint16), photometric="minisblack")
    with tifffile.TiffWriter("one_pixel.tif") as tw:  # three 1x1 pages (imwrite would make one 3x1 page)
        for c in range(3):
            tw.write(np.full((1, 1), 100 + c, np.uint16), photometric="minisblack", contiguous=False)
    tifffile.imwrite("tiny_5x5.tif", good[:, :5, :5], photometric="minisblack")
    tifffile.imwrite("two_channels.tif", good[:2], photometric="minisblack")
    open("not_a_tiff.tif", "w").write("this is text, not an image\n")
    # axes numpy cannot reorder (two Y axes): any loader exception must stay with its file
    tifffile.imwrite("unexpected_axes.tif", good, photometric="minisblack", metadata={"axes": "YYX"})


if __name__ == "__main__":
    main()
