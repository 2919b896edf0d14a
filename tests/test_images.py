from pathlib import Path

import pytest

from dinov2_vpr.data.images import IMAGE_EXTENSIONS, list_images


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folder_is_searched_recursively_in_natural_order(tmp_path):
    for name in ["seq/img10.jpg", "seq/img2.jpg", "seq/img1.JPG", "b/1.png", "a10/x.jpeg", "a2/x.webp", "notes.txt"]:
        touch(tmp_path / name)
    found = list_images(tmp_path)
    relative = [path.relative_to(tmp_path).as_posix() for path in found]
    assert relative == ["a2/x.webp", "a10/x.jpeg", "b/1.png", "seq/img1.JPG", "seq/img2.jpg", "seq/img10.jpg"]
    assert all(path.is_file() for path in found)


def test_list_file_keeps_its_order_and_resolves_relative_paths(tmp_path):
    absolute = touch(tmp_path / "elsewhere" / "far.png")
    touch(tmp_path / "lists" / "frames" / "b.jpg")
    touch(tmp_path / "lists" / "frames" / "a.jpg")
    list_file = tmp_path / "lists" / "images.txt"
    list_file.write_text(f"# night sequence\nframes/b.jpg\n\n  frames/a.jpg  \n{absolute}\n")
    assert list_images(list_file) == [
        tmp_path / "lists" / "frames" / "b.jpg",
        tmp_path / "lists" / "frames" / "a.jpg",
        absolute,
    ]


def test_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        list_images(tmp_path / "missing_folder")

    touch(tmp_path / "empty" / "readme.md")
    with pytest.raises(FileNotFoundError, match=r"No images found in folder .*empty"):
        list_images(tmp_path / "empty")

    touch(tmp_path / "a.jpg")
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.jpg\n# comment\nb.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"list\.txt:3: image .*b\.jpg does not exist"):
        list_images(list_file)

    list_file.write_text("a.jpg\nlabels.csv\n")
    with pytest.raises(ValueError, match=r"list\.txt:2: 'labels\.csv' does not have an image extension"):
        list_images(list_file)

    list_file.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"list\.txt names no images"):
        list_images(list_file)


def test_extensions_are_lower_case_with_dot():
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS
    assert all(extension.startswith(".") and extension == extension.lower() for extension in IMAGE_EXTENSIONS)
