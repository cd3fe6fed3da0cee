"""Dataset versions in a git + DVC repository: track, tag, push, and pull an exact version back.

The data repository is the workdir by default. Git holds the small ``.dvc`` pointer
files and one tag per version; DVC holds the bytes, in its cache and on the remote
(a local folder on one machine, ``gs://`` in a cluster).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alpr.errors import AlprError, redact
from alpr.storage import drop_missing_key_file
from alpr.workdir import dataset_dir

REMOTE_NAME = "storage"
# a user's signing settings and hooks are not for alpr's commits: a signed tag opens an editor for its message
GIT_IDENTITY = ["-c", "user.name=alpr", "-c", "user.email=alpr@localhost", "-c", "commit.gpgsign=false",
                "-c", "tag.gpgSign=false", "-c", "core.hooksPath=/dev/null"]


class VersioningError(AlprError, RuntimeError):
    pass


class TagConflict(VersioningError):
    """A version's tag names other bytes than those tracked now."""


def dataset_tag(name: str, version: str) -> str:
    return f"{name}-v{version}"


def annotation_tag(name: str, version: str) -> str:
    return f"{name}-ann-v{version}"


def _env() -> dict[str, str]:
    drop_missing_key_file()  # DVC's gs:// remote reads the same Google credentials
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()  # git and DVC repeat the remote's URL
        raise VersioningError(redact(f"`{' '.join(args)}` failed in {cwd}:\n{output}"))
    return result.stdout


def git(repo: Path, *args: str) -> str:
    """Runs git; waits out another record's git command that holds the index (index.lock), and runs
    again an init that met another record's init copying git's templates at the same moment (the
    later fails on a file the other just made; an init of a repository that exists changes nothing)."""
    for wait in (*[0.2] * 50, None):  # 10 s at most: a git command holds it for milliseconds
        try:
            return _run(["git", *GIT_IDENTITY, *args], repo)
        except VersioningError as error:
            raced = "index.lock': File exists" in str(error) or (args[0] == "init" and "File exists" in str(error))
            if wait is None or not raced:
                raise
            time.sleep(wait)


def dvc(repo: Path, *args: str) -> str:
    """Runs DVC, waiting for another record's DVC command rather than failing on its lock."""
    return _run([sys.executable, "-m", "dvc", "--wait-for-lock", *args], repo)


def remote_url(location: str) -> str:
    """A DVC remote as DVC wants it: URLs as given, local paths absolute."""
    return location if "://" in location else str(Path(location).resolve())


class DataRepo:
    """A git + DVC repository whose working tree holds ``datasets/`` and ``annotations/``."""

    def __init__(self, root: Path, remote: str, workdir: Path):
        self.root, self.workdir = root.resolve(), workdir.resolve()
        self.remote = remote_url(remote)
        if not self.workdir.is_relative_to(self.root):
            raise VersioningError(f"data repository {self.root} does not hold the workdir {workdir.resolve()}: "
                                  "it tracks the workdir's datasets/ and annotations/, so it must be the workdir "
                                  "or a folder above it")

    def ensure(self) -> None:
        """Initialises git, DVC and the default remote once; later calls change nothing."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists():  # a repository of ours; one of the user's keeps its own ignores
            git(self.root, "init", "-q", "-b", "main")
            (self.root / ".gitignore").write_text(self.gitignore())
        if not (self.root / ".dvc").exists():
            try:
                dvc(self.root, "init")  # not -q: that would hide DVC's reason when it fails
            except VersioningError:
                if not (self.root / ".dvc").is_dir():  # else another record's init came first
                    raise
            dvc(self.root, "config", "core.analytics", "false")
        if "://" not in self.remote:
            Path(self.remote).mkdir(parents=True, exist_ok=True)
        current = dvc(self.root, "remote", "list").split()
        if current[:2] != [REMOTE_NAME, self.remote]:
            dvc(self.root, "remote", "add", "--force", "--default", REMOTE_NAME, self.remote)
        ignores = self.root / ".gitignore"
        ours = [".gitignore"] if ignores.is_file() and ignores.read_text() == self.gitignore() else []
        self.commit("alpr: initialise data repository", [*ours, ".dvc/config", ".dvc/.gitignore", ".dvcignore"])

    def check_trackable(self, *folders: Path) -> None:
        """DVC refuses to track a folder whose pointer git ignores (a repository of yours that ignores
        the workdir): said before anything is written or committed here."""
        if not (self.root / ".git").exists():
            return  # a repository of ours is made to track them
        for folder in folders:
            relative = folder.resolve().relative_to(self.root)
            # the folder itself by a rule of yours, not DVC's own (its .gitignore beside it): DVC's matcher
            # then skips the folder above it too, and its push finds no pointer to push
            for path, dvcs_own in ((f"{relative}.dvc", None), (f"{relative}/", f"{relative.parent}/.gitignore:")):
                ignored = subprocess.run(["git", "check-ignore", "-v", "--no-index", path], cwd=self.root,
                                         env=_env(), capture_output=True, text=True)
                rule = ignored.stdout.split("\t")[0]
                negated = rule.split(":", 2)[-1].startswith("!")  # -v names a last rule that re-includes it too
                by_dvc = dvcs_own is not None and rule.startswith(dvcs_own)
                if ignored.returncode == 0 and not negated and not by_dvc:
                    raise VersioningError(f"{self.root / path}: git ignores it ({rule}), so DVC cannot version "
                                          f"{folder.name}; let git see the workdir's datasets/ and annotations/, or "
                                          "give another --data-repo")

    def gitignore(self) -> str:
        """Only the versioned folders belong in git; runs, databases and scratch stay out."""
        lines, folder = ["/*", "!/.gitignore", "!/.dvcignore", "!/.dvc"], ""
        for part in self.workdir.relative_to(self.root).parts:  # down to the workdir, where it is deeper
            folder += f"/{part}"
            # ?* where git would take *: DVC's matcher lets * match the empty name, so it took
            # "/work/*" to ignore work/ itself and never found the pointers below it
            lines += [f"!{folder}", f"{folder}/?*"]
        return "\n".join(lines + [f"!{folder}/datasets", f"!{folder}/annotations"]) + "\n"

    def commit(self, message: str, paths: list[str]) -> bool:
        """Commits these paths alone: changes the user staged in a shared repository stay staged.
        False when HEAD holds them already, also when another record committed the same bytes first.
        A path that is not there is left out: DVC writes no .gitignore where git ignores the folder already."""
        paths = [path for path in paths if (self.root / path).exists() or self._tracked(path)]
        if not paths:  # `git commit --` with none would commit whatever the user had staged
            return False
        git(self.root, "add", "--", *paths)
        if not self._staged(paths):
            return False
        try:
            git(self.root, "commit", "-q", "-m", message, "--", *paths)
        except VersioningError:
            if self._staged(paths):
                raise
            return False  # git refused an empty commit: another record's commit came between
        return True

    def _tracked(self, path: str) -> bool:  # gone from the tree, still in the index: its removal is committed
        return bool(git(self.root, "ls-files", "--", path).strip())

    def _staged(self, paths: list[str]) -> bool:
        return bool(git(self.root, "diff", "--cached", "--name-only", "--", *paths).strip())

    def tag_commit(self, tag: str) -> str | None:
        result = subprocess.run(["git", "rev-list", "-n", "1", tag], cwd=self.root, env=_env(),
                                capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    def track(self, folder: Path, tag: str, message: str) -> str:
        """dvc add + git commit + tag; re-tracking identical bytes changes nothing."""
        relative = folder.resolve().relative_to(self.root)
        pointer = f"{relative}.dvc"
        dvc(self.root, "add", str(relative))  # not -q: that would hide DVC's reason when it fails
        tagged = self.tag_commit(tag) is not None
        if tagged:
            self._check_tagged(tag, pointer, relative)
        self.commit(message, [pointer, str(relative.parent / ".gitignore")])
        if not tagged:
            try:
                git(self.root, "tag", tag)
            except VersioningError:
                if self.tag_commit(tag) is None:  # else another record of this version tagged it first
                    raise
                self._check_tagged(tag, pointer, relative)
        return tag

    def _check_tagged(self, tag: str, pointer: str, relative: Path) -> None:
        """The tag names the pointer just tracked, or VersioningError (the branch keeping the tagged one)."""
        if git(self.root, "show", f"{tag}:{pointer}") != (self.root / pointer).read_text():
            git(self.root, "checkout", tag, "--", pointer)  # the branch keeps the tagged pointer, uncommitted
            raise TagConflict(f"tag {tag} already names other content of {relative} (a version's manifest "
                                  "names its source folder: recorded from another?); record it from the source "
                                  "it was recorded from, or under a new version")

    def push(self, *folders: Path) -> None:
        # to alpr's remote by name: a user's own default (dvc remote default --local) would take it elsewhere
        dvc(self.root, "push", "-r", REMOTE_NAME, *(str(f.resolve().relative_to(self.root)) for f in folders))


def path_in_repo(source: str, tag: str, folder: str, cwd: Path) -> str:
    """Where the tagged commit keeps ``folder`` (datasets/NAME/VERSION): below the workdir, which is
    the data repository's root or a folder in it. Clones the tag's tree alone, without file contents."""
    pointer = f"{folder}.dvc"
    if not git(cwd, "ls-remote", "--tags", source, f"refs/tags/{tag}").strip():  # else git's "Remote branch"
        raise VersioningError(f"{redact(source)}: no tag {tag}; that version was not recorded in this repository")
    with tempfile.TemporaryDirectory() as clone:
        git(cwd, "clone", "-q", "--bare", "--depth", "1", "--filter=blob:none", "--branch", tag, source, clone)
        names = git(Path(clone), "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    found = [name.removesuffix(".dvc") for name in names if name == pointer or name.endswith(f"/{pointer}")]
    if not found:
        raise VersioningError(f"{redact(source)}: tag {tag} holds no {pointer}")
    if len(found) > 1:
        raise VersioningError(f"{redact(source)}: tag {tag} holds {len(found)} of them ({', '.join(found)}); "
                              "cannot tell which to pull")
    return found[0]


def pull_dataset(repo: str, name: str, version: str, workdir: Path) -> Path:
    """Restores datasets/NAME/VERSION exactly as tagged, from the repo's DVC remote, into workdir."""
    workdir = workdir.resolve()  # dvc runs in workdir: a relative path would be taken from there
    target = dataset_dir(workdir, name, version)
    if target.exists():
        raise VersioningError(f"{target} already exists; pull into a fresh workdir or remove it first")
    source = repo if is_git_url(repo) else str(Path(repo).resolve())
    if not is_git_url(repo) and not Path(source).is_dir():
        raise VersioningError(f"{repo}: no such data repository (--data-repo: the git + DVC repository that "
                              "recorded the version)")
    workdir.mkdir(parents=True, exist_ok=True)  # git and dvc run there
    tag = dataset_tag(name, version)
    inside = path_in_repo(source, tag, target.relative_to(workdir).as_posix(), workdir)
    target.parent.mkdir(parents=True, exist_ok=True)  # only now: a refused pull leaves no empty folders
    partial = target.with_name(f".{version}.pull")
    shutil.rmtree(partial, ignore_errors=True)  # a pull killed before its cleanup: dvc get would nest into it
    try:
        _run([sys.executable, "-m", "dvc", "get", "--rev", tag, source, inside, "-o", str(partial)], workdir)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def is_git_url(repo: str) -> bool:
    """A URL (https://, ssh://, file://) or scp-like SSH address (git@host:org/repo.git), not a local path."""
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None
