"""Record a labelme folder as a versioned COCO dataset: validate, split, write, version, catalogue, upload.

Layout written under the workdir::

    datasets/NAME/V/{images/, train.json, val.json, test.json, manifest.json[, invalid.json]}
    annotations/NAME/V/   the labelme source, as recorded (DVC-tracked too)
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from alpr import db, storage
from alpr.dataset import (
    DEFAULT_FRACTIONS,
    SPLITS,
    AnnotatedImage,
    InvalidAnnotations,
    content_sha256,
    paused_gc,
    scan,
    sha256_bytes,
    sha256_file,
    split_of,
    to_coco,
)
from alpr.errors import AlprError, UsageError, read_json
from alpr.plates import CLASSES
from alpr.versioning import DataRepo, TagConflict, annotation_tag, dataset_tag
from alpr.workdir import annotations_dir, dataset_dir

# Names make folders and git tags: no "..", and no "." or ".lock" at the end, which git refuses in a tag.
NAME_RE = re.compile(r"^(?!.*\.\.)(?!.*\.lock$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?<!\.)$")


@dataclass(frozen=True)
class RecordOptions:
    source: Path
    workdir: Path
    dataset: str
    version: str
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    skip_invalid: bool = False
    db_url: str | None = None
    data_repo: Path | None = None
    dvc_remote: str | None = None
    dvc: bool = True
    push: bool = True
    store: str | None = None
    progress: bool = False  # a bar (or log lines) while validating, a line before each long stage


@dataclass
class RecordResult:
    path: Path
    manifest: dict
    created: bool  # False when this exact version was already recorded
    skipped: list[str] = field(default_factory=list)
    db_rows: dict[str, int] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # recorded all the same: what training may trip on


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise UsageError(f"{kind} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit, with no '..' and not ending in '.' or '.lock' (it names a git tag)")
    return value


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")  # compact: C encoder, 10x faster


def build_splits(items: list[AnnotatedImage], fractions: tuple[float, float, float]) -> dict[str, dict]:
    by_split: dict[str, list[tuple[int, AnnotatedImage]]] = {s: [] for s in SPLITS}
    for image_id, item in enumerate(items, start=1):
        by_split[split_of(item.name, fractions)].append((image_id, item))
    documents, next_id = {}, 1
    with paused_gc():
        for split in SPLITS:
            documents[split] = to_coco(by_split[split], first_annotation_id=next_id)
            next_id += len(documents[split]["annotations"])
    return documents


def _file_checksums(folder: Path, items: list[AnnotatedImage]) -> dict[str, str]:
    """sha256 of every file but the manifest; image hashes are known from validation."""
    known = {f"images/{item.name}": item.image_sha256 for item in items}
    return {path: known.get(path) or sha256_bytes((folder / path).read_bytes())
            for path in sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                               if p.is_file() and p.name != "manifest.json")}


def _write_dataset(folder: Path, items: list[AnnotatedImage], splits: dict[str, dict], manifest: dict,
                   skipped: list[dict], link: bool) -> None:
    (folder / "images").mkdir(parents=True)
    for item in items:
        _link_or_copy(item.image_path, folder / "images" / item.name, link)
    for split, document in splits.items():
        _write_json(folder / f"{split}.json", document)
    if skipped:
        _write_json(folder / "invalid.json", {"skipped": skipped})
    manifest["files"] = _file_checksums(folder, items)
    _write_json(folder / "manifest.json", manifest)


def _link_or_copy(source: Path, target: Path, link: bool) -> None:
    """With ``link``, a hard link where the filesystem allows, else a copy: a new file costs far more
    than a link. Without DVC only: DVC replaces a linked file by a copy of its own as it tracks it,
    deleting it first, so a record killed then left the version short of it (and paid for both).

    A link shares its bytes with the source, so an image edited in place after recording would
    change the version too; alpr and labelme never do that (alpr writes a temporary file and
    renames it, labelme does not write images), and the manifest's sha256 would tell.
    """
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def _write_annotations(folder: Path, items: list[AnnotatedImage], dataset_images: Path, link: bool) -> None:
    folder.mkdir(parents=True)
    for item in items:
        stem = Path(item.name).stem
        _link_or_copy(dataset_images / item.name, folder / item.name, link)
        if item.image_ref == item.name:  # a copy, not a link: labelme saves its files in place
            shutil.copyfile(item.json_path, folder / f"{stem}.json")
        else:
            document = json.loads(item.json_path.read_bytes())
            document["imagePath"] = item.name  # the copy sits next to its image
            _write_json(folder / f"{stem}.json", document)


def check_as_recorded(folder: Path, manifest: dict, annotations: Path, items: list[AnnotatedImage]) -> None:
    """A version's folders as recorded, before a re-run (a retried step) tracks, tags and catalogues
    them: the dataset's files those its manifest lists, with their sha256; the annotations' names."""
    listed = manifest.get("files", {})
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    problems = ([f"{path} is missing" for path in sorted(listed.keys() - found)] +
                [f"{path} is not in its manifest" for path in sorted(found - listed.keys())] +
                [f"{path} has changed" for path in sorted(listed.keys() & found) if
                 sha256_file(folder / path) != listed[path]])
    if annotations.is_dir():
        wanted = {name for item in items for name in (item.name, f"{Path(item.name).stem}.json")}
        present = {p.name for p in annotations.iterdir()}
        problems += [f"{annotations.name}/{name} is missing" for name in sorted(wanted - present)]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AlprError(f"{folder}: not as recorded ({'; '.join(problems[:3])}{more}); the source is intact: delete "
                        f"{folder} and {annotations} and record again")


def _atomic_folder(target: Path, write) -> bool:
    """Writes a folder under a temporary name of its own and renames it, so a failure leaves nothing behind
    and two records of one version at once do not write into each other's: the first to finish stands.
    False when another record's folder was in place first (the caller checks it holds the same content)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        write(partial)
        try:
            os.replace(partial, target)
        except OSError:  # the other record's folder is in place
            if not target.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def check_same_content(folder: Path, name: str, version: str, digest: str) -> dict:
    """The recorded manifest, or VersionConflict if the version in ``folder`` holds other content."""
    recorded = read_json(folder / "manifest.json")
    if not isinstance(recorded, dict):
        raise UsageError(f"{folder / 'manifest.json'}: not a manifest `alpr record` wrote (a JSON "
                         f"{type(recorded).__name__}, not an object); move the folder aside and record again")
    if recorded.get("content_sha256") != digest:
        raise db.VersionConflict(f"{folder} already holds dataset {name!r} version {version!r} with other "
                                 "content; record it under a new version")
    return recorded


def _counts(splits: dict[str, dict]) -> dict[str, dict[str, int]]:
    board_ids = {CLASSES.index(c) + 1 for c in ("r_board", "l_board")}
    return {
        split: {
            "images": len(doc["images"]),
            "annotations": len(doc["annotations"]),
            "plates": sum(a["category_id"] in board_ids for a in doc["annotations"]),
        }
        for split, doc in splits.items()
    }


def split_archive(folder: Path) -> bytes:
    """A reproducible tar.gz of the split files: same content, same bytes."""
    import gzip

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name in (*(f"{s}.json" for s in SPLITS), "manifest.json"):
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _stored(store: str, name: str, version: str, file: str) -> str:
    return storage.join(store, "datasets", name, version, file)


def check_store(store: str, name: str, version: str, digest: str) -> None:
    """A conflict with the version in the store, refused before anything is written: another workdir
    (its own database) may have recorded other content under this name and version there."""
    url = _stored(store, name, version, "manifest.json")
    if storage.exists(url):
        stored = _stored_manifest(url).get("content_sha256")
        if stored != digest:
            raise db.VersionConflict(f"{url} holds dataset {name!r} version {version!r} with other content "
                                     f"(sha256 {str(stored)[:12]}...); record it under a new version")


def _stored_manifest(url: str) -> dict:
    """The manifest in the store, or an error naming it: a damaged one tells nothing of the content there."""
    try:
        manifest = json.loads(storage.read_bytes(url))
    except ValueError as error:  # invalid JSON or not UTF-8
        raise storage.StorageError(f"{url}: not a dataset manifest: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise storage.StorageError(f"{url}: not a dataset manifest: JSON, but not an object")
    return manifest


def upload(folder: Path, store: str, name: str, version: str) -> list[str]:
    """The manifest and the split files; the manifest last, so that one there names a whole upload."""
    manifest, archive = (_stored(store, name, version, file) for file in ("manifest.json", "splits.tar.gz"))
    storage.write_bytes(archive, split_archive(folder))
    storage.write_bytes(manifest, (folder / "manifest.json").read_bytes())
    return [manifest, archive]


def _announce(options: RecordOptions, line: str) -> None:
    """A line before a long stage, so that a step's log says what it waits on."""
    if options.progress:
        print(line, flush=True)


def record(options: RecordOptions) -> RecordResult:
    name, version = check_name("dataset", options.dataset), check_name("version", options.version)
    if name.endswith("-ann"):
        raise UsageError(f"dataset {name!r}: a name ending in '-ann' would share its git tags with the annotations "
                         f"of dataset {name[:-4]!r} ({annotation_tag(name[:-4], version)})")
    if "-v" in version:  # tags are NAME-vVERSION: dataset a version 1-v2 and dataset a-v1 version 2 would share one
        raise UsageError(f"version {version!r}: '-v' in a version would make its git tag "
                         f"({dataset_tag(name, version)}) one another dataset's version could have")
    workdir = options.workdir.resolve()
    if options.store:
        storage.check_url(options.store)  # now, not after the version is written
    if options.dvc:
        repo = DataRepo(options.data_repo or workdir, options.dvc_remote or str(workdir / "dvc-remote"), workdir)
    items, errors = scan(options.source, progress=options.progress)
    if errors and not options.skip_invalid:
        raise InvalidAnnotations(errors)
    if not items:
        raise UsageError(f"{options.source}: " + ("no valid labelme files to record" if errors else
                                                  "no labelme files (*.json) here to record"))
    digest = content_sha256(items, options.fractions)
    engine = db.connect(options.db_url or db.default_db_url(workdir))
    db.check_version(engine, name, version, digest)  # refuse a conflict before writing anything
    if options.store:
        check_store(options.store, name, version, digest)

    folder, annotations = dataset_dir(workdir, name, version), annotations_dir(workdir, name, version)
    if options.dvc:
        repo.check_trackable(folder, annotations)
    created = not folder.exists()
    if not created:
        check_as_recorded(folder, check_same_content(folder, name, version, digest), annotations, items)
    splits = build_splits(items, options.fractions)
    skipped = [{"file": str(Path(e.path).resolve()), "problem": e.problem} for e in errors]  # wherever run from
    if created:
        manifest = {
            "name": name,
            "version": version,
            "content_sha256": digest,
            "classes": list(CLASSES),
            "split": dict(zip(SPLITS, options.fractions)),
            "counts": _counts(splits),
            "skipped_invalid": len(skipped),
            "source": str(options.source.resolve()),
            "annotations": {"path": annotations.relative_to(workdir).as_posix(), "tag": annotation_tag(name, version),
                            "files": len(items)},
            "dataset_tag": dataset_tag(name, version),
        }
        created = _atomic_folder(folder, lambda tmp: _write_dataset(tmp, items, splits, manifest, skipped,
                                                                    not options.dvc))
        if not created:  # another record of this version finished first: checked before its annotations
            check_same_content(folder, name, version, digest)
    annotated = not annotations.exists() and _atomic_folder(  # also repairs a run stopped between the two
        annotations, lambda tmp: _write_annotations(tmp, items, folder / "images", not options.dvc))
    manifest = read_json(folder / "manifest.json")

    if options.dvc:
        _announce(options, f"tracking {name} v{version} with git + DVC in {repo.root}")
        repo.ensure()
        try:
            repo.track(annotations, annotation_tag(name, version), f"annotations {name} v{version}")
            repo.track(folder, dataset_tag(name, version), f"dataset {name} v{version}")
        except TagConflict:
            # what this run wrote goes: a version written again whose tag names other bytes (its manifest
            # names another source folder) would be refused again from the tagged source too
            for path, wrote in ((folder, created), (annotations, annotated)):
                if wrote:
                    shutil.rmtree(path, ignore_errors=True)
            raise
        if options.push:
            _announce(options, f"pushing {len(items)} images and their annotations to the DVC remote")
            repo.push(annotations, folder)

    split_names = {image["file_name"]: split for split, doc in splits.items() for image in doc["images"]}
    rows = [db.ImageRow(i.name, i.image_sha256, split_names[i.name], i.width, i.height, i.plate_count) for i in items]
    counts = manifest["counts"]
    db.record_version(
        engine,
        db.DatasetRow(name, version, digest, dataset_tag(name, version), str(folder), len(items),
                      sum(c["annotations"] for c in counts.values()), sum(c["plates"] for c in counts.values())),
        db.SourceRow(manifest["source"], manifest["annotations"]["path"], annotation_tag(name, version), digest,
                     len(items)),
        rows,
    )
    uploaded = upload(folder, options.store, name, version) if options.store else []
    return RecordResult(folder, manifest, created, [s["file"] for s in skipped],
                        db.count_images(engine, name, version), uploaded, data_warnings(items, manifest))


def data_warnings(items: list[AnnotatedImage], manifest: dict) -> list[str]:
    """An empty split that was asked for (training refuses an empty train or val split), and one image
    under several names (a copy in another split scores a model on what it trained on)."""
    warnings = [f"the {split} split is empty: more images, or other --split fractions"
                for split, share in manifest["split"].items() if share > 0 and not manifest["counts"][split]["images"]]
    names: dict[str, list[str]] = {}
    for item in items:
        names.setdefault(item.image_sha256, []).append(item.name)
    copies = [sorted(group) for group in names.values() if len(group) > 1]
    if copies:
        warnings.append(f"{sum(map(len, copies)) - len(copies)} image(s) are copies of another under another name "
                        f"(e.g. {' = '.join(copies[0][:3])})")
    return warnings
