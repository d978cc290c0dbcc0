"""Prepare TFDS data sets once (array_record) and read back their per-record metadata.

From the command line: ``effnet-data prepare`` (``python -m effnet_jax.cli.data prepare``).
"""

import contextlib
import dataclasses
import fcntl
import logging
import os
import shlex
import shutil

import numpy as np

from effnet_jax.data import prepared_files
from effnet_jax.data import splits as splits_lib
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.progress import quiet_library_noise


@dataclasses.dataclass(frozen=True)
class BuilderFactory:
    """Everything needed to (re)create a builder; picklable, so grain workers can use it."""

    name: str
    data_dir: str | None = None
    manual_dir: str | None = None
    max_size: int = 512
    on_bad_image: str = "error"
    mnist_size: int = 224
    exclude_list: str | None = None  # chest_xray: exclusion list file (effnet-data clean)
    follow_links: bool = False  # read links to files (a PneumoniaMNIST npz too) wherever they point
    # folder: the task's classes, file-name rules and patient rule (effnet_jax.data.folders)
    class_names: tuple = ()
    class_from_name: tuple = ()
    patient_id_pattern: str | None = None

    def folder_config(self) -> dict:
        """The ``data`` keys ``effnet_jax.data.folders`` reads, from this factory."""
        return {
            "manual_dir": os.path.expanduser(self.manual_dir) if self.manual_dir else None,
            "class_names": self.class_names,
            "class_from_name": self.class_from_name,
            "patient_id_pattern": self.patient_id_pattern,
            "follow_links": self.follow_links,
        }

    def __call__(self):
        import tensorflow_datasets as tfds  # noqa: F401  # pylint: disable=g-import-not-at-top  (fail early without TFDS)

        data_dir = os.path.expanduser(self.data_dir) if self.data_dir else None
        raw = os.path.expanduser(self.manual_dir) if self.manual_dir else None
        if self.name == "chest_xray":
            from effnet_jax.data.builders import chest_xray  # pylint: disable=g-import-not-at-top

            cls = chest_xray.ChestXray
            exclude = os.path.expanduser(self.exclude_list) if self.exclude_list else None
            config = chest_xray.ChestXrayConfig(
                max_size=self.max_size,
                on_bad_image=self.on_bad_image,
                exclude_list=exclude,
                follow_links=self.follow_links,
            )
        elif self.name == "folder":
            from effnet_jax.data import folders  # pylint: disable=g-import-not-at-top
            from effnet_jax.data.builders import folder  # pylint: disable=g-import-not-at-top

            cls = folder.ClassFolders
            task = self.folder_config()
            if self.patient_id_pattern:
                folders.compiled(self.patient_id_pattern)  # a bad rule is refused before any file is read
            exclude = os.path.expanduser(self.exclude_list) if self.exclude_list else None
            config = folder.ClassFoldersConfig(
                max_size=self.max_size,
                on_bad_image=self.on_bad_image,
                exclude_list=exclude,
                follow_links=self.follow_links,
                class_names=folders.class_names(task),
                rules=folders.rules(task),
                patient_id_pattern=self.patient_id_pattern,
                identity=folders.identity(task),
            )
        elif self.name == "pneumonia_mnist":
            if self.exclude_list:
                raise ValueError(
                    f"data.exclude_list={self.exclude_list!r}: only chest_xray honours an "
                    "exclusion list (PneumoniaMNIST files have no names to list)"
                )
            from effnet_jax.data.builders import pneumonia_mnist  # pylint: disable=g-import-not-at-top

            cls = pneumonia_mnist.PneumoniaMnist
            config = pneumonia_mnist.config_for(self.mnist_size)
        else:
            raise ValueError(
                f"data.name={self.name!r}: no TFDS builder (expected chest_xray, folder or pneumonia_mnist)"
            )
        # TFDS refuses a custom config object named like a registered one: pass the name.
        registered = {c.name for c in cls.BUILDER_CONFIGS}
        # chest_xray and folder take follow_links in their config; PneumoniaMNIST as an argument.
        extra = {"follow_links": self.follow_links} if self.name == "pneumonia_mnist" else {}
        return cls(
            **extra,
            raw_path=raw,
            data_dir=data_dir,
            file_format="array_record",
            config=config.name if config.name in registered else config,
        )


class StalePreparedDataError(ValueError):
    """The prepared data set was prepared from other files than data.manual_dir now holds."""


def _how_to_prepare(factory: BuilderFactory, data_dir: str) -> str:
    """The command that prepares the data set ``factory`` makes (effnet-data prepare, or effnet-train for a task)."""
    if factory.name == "folder":  # its classes and rules are config keys effnet-data has no flags for
        return "prepare it by running effnet-train with the run's config and these data folders"
    flags = [f"--name={factory.name}", f"--data_dir={data_dir}"]
    flags.append(f"--manual_dir={factory.manual_dir or 'DIR'}" if factory.name == "chest_xray" else "")
    if factory.name == "chest_xray":
        flags += [f"--max_size={factory.max_size}", f"--on_bad_image={factory.on_bad_image}"]
        flags.append(f"--exclude_list={factory.exclude_list}" if factory.exclude_list else "")
    else:  # PneumoniaMNIST: downloaded unless manual_dir holds the npz
        flags.append(f"--mnist_size={factory.mnist_size}")
        flags.append(f"--manual_dir={factory.manual_dir}" if factory.manual_dir else "")
    flags.append("--follow_links" if factory.follow_links else "")
    return "prepare it with effnet-data prepare " + " ".join(shlex.quote(f) for f in flags if f)


def ensure_prepared(factory: BuilderFactory, allow_prepare: bool = True):
    """Return the builder, preparing its data first when it is not there yet.

    A chest_xray set prepared from files other than those data.manual_dir lists now
    (another folder, or files added, removed, resized or rewritten: the fingerprint covers
    names, sizes and each file's CRC-32) is refused, not silently reused nor deleted:
    another run may be reading it.
    """
    quiet_library_noise()  # TFDS warns of a folder being prepared (or a failed preparation's)
    builder = factory()
    _check_version_folder(builder)
    if builder.is_prepared():
        if not builder.info.splits:
            # Made while another process was still preparing the set, the builder read no
            # dataset info; one made now reads what that process wrote.
            builder = factory()
        _check_source(factory, builder)
        return builder
    if not allow_prepare:
        raise FileNotFoundError(
            f"{factory.name} ({builder.builder_config.name}) is not prepared under {builder.data_dir}; "
            f"{_how_to_prepare(factory, str(builder.data_dir_root))} (effnet-train prepares it unless "
            "data.prepare=False; commands that read a saved run never do)"
        )
    if factory.name in ("chest_xray", "folder") and factory.manual_dir is None:
        raise ValueError(
            f"{factory.name} is not prepared under {builder.data_dir} and "
            "data.manual_dir is None; set it to the chest_xray folder or its zip"
        )
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    _check_inputs(factory)  # before anything is announced or written
    check_data_dir(str(builder.data_dir_root))
    _refuse_linked_output_folders(builder, downloads=factory.name == "pneumonia_mnist")
    # TFDS's own bars redraw with control codes even in a pipe; the builders show ours.
    tfds.disable_progress_bar()
    data_dir = str(builder.data_dir_root)
    ours = [data_dir, os.path.join(data_dir, builder.name), os.path.join(data_dir, "downloads")]
    fresh = [d for d in ours if not os.path.exists(d)]
    try:
        # Two trainings started together on unprepared data would both write the same
        # folder: the second waits for the first, then finds the data prepared.
        with _preparation_lock(factory, builder):
            builder = factory()
            _check_version_folder(builder)
            if builder.is_prepared():
                _check_source(factory, builder)
                return builder
            builder.download_and_prepare()
    except BaseException:
        # A failed preparation leaves no skeleton behind (TFDS drops its partial files, not
        # the folders it made): the folders this call created go, deepest first.
        for folder in reversed(fresh):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return builder


def _check_version_folder(builder) -> None:
    """A version folder without ``dataset_info.json`` is refused, naming it.

    TFDS writes a preparation elsewhere and renames it into place whole, so such a folder (an
    empty one, made by hand or planted, or a link to one) was never prepared; TFDS would still
    "reuse" it, as a set of splits with no files to read.
    """
    path = str(builder.data_path)
    if "://" in path:
        return
    if not os.path.lexists(path):
        return
    # Read as written: a link at the set's folders, or among its files, would have it read elsewhere.
    _refuse_linked_output_folders(builder, downloads=False, doing="read the data set")
    if os.path.isdir(path):
        prepared_files.refuse_links(path)
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return
    link = f" (a symbolic link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise ValueError(
        f"{path}{link}: a prepared data set's folder without its dataset_info.json, not written by a "
        "preparation; remove it to prepare the data set again, or set data.data_dir to another folder"
    )


def _output_folders(builder, downloads: bool) -> list[str]:
    """The folders TFDS writes a preparation into under ``data.data_dir``: the data set's, its config's, the version's,
    its ``.config/``, and ``downloads/`` when the file is downloaded (PneumoniaMNIST)."""
    root = str(builder.data_dir_root)
    parts = os.path.relpath(str(builder.data_path), root).split(os.sep)
    if parts[0] == os.pardir:  # not under the root: nothing of ours to check
        parts = []
    folders = [os.path.join(root, *parts[: i + 1]) for i in range(len(parts))]
    folders.append(os.path.join(root, builder.name, ".config"))
    return [*folders, os.path.join(root, "downloads")] if downloads else folders


def check_data_dir(root: str) -> None:
    """``data.data_dir`` must be a folder, or not exist yet: a ValueError naming the key otherwise."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise ValueError(f"data.data_dir={root!r}: not a folder; expected the folder to prepare the data set into")


def _refuse_linked_output_folders(builder, downloads: bool, doing: str = "prepare the data set") -> None:
    """A symbolic link planted at a folder the preparation writes into is refused (UnsafeOutputError) naming it.

    TFDS would write the whole prepared set wherever it leads (data.data_dir may be a shared
    or downloaded folder); the user names data.data_dir itself, which may be a link.
    """
    for folder in _output_folders(builder, downloads):
        if os.path.islink(folder):
            raise UnsafeOutputError(
                f"{folder}: is a symbolic link to {os.path.realpath(folder)}; refusing to {doing} "
                "through it (remove the link, or set data.data_dir to another folder)"
            )


@contextlib.contextmanager
def _preparation_lock(factory: BuilderFactory, builder):
    """Holds an exclusive lock on a file beside the prepared data sets while one is prepared."""
    root = str(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f".{builder.name}.{builder.builder_config.name}.prepare-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger("effnet_jax.data").info(
                "waiting for another process preparing %s (%s) in %s", factory.name, builder.builder_config.name, root
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _check_inputs(factory: BuilderFactory) -> None:
    """Fails in one line when the raw data to prepare from is missing or not in the expected layout."""
    if factory.name == "chest_xray" and factory.manual_dir:
        from effnet_jax.data import kermany  # pylint: disable=g-import-not-at-top

        kermany.scan(os.path.expanduser(factory.manual_dir), follow_links=factory.follow_links).close()
    elif factory.name == "folder":
        _scan(factory).close()
    elif (
        factory.name != "pneumonia_mnist"  # downloads into a missing manual_dir
        and factory.manual_dir
        and not os.path.isdir(os.path.expanduser(factory.manual_dir))
    ):
        raise FileNotFoundError(
            f"data.manual_dir={factory.manual_dir!r} does not exist; expected a folder holding the {factory.name} files"
        )


def _scan(factory: BuilderFactory):
    """The raw layout a chest_xray or folder factory prepares from."""
    from effnet_jax.data import folders, kermany  # pylint: disable=g-import-not-at-top

    if factory.name == "folder":
        return folders.scan(factory.folder_config())
    return kermany.scan(os.path.expanduser(factory.manual_dir), follow_links=factory.follow_links)


def _check_source(factory: BuilderFactory, builder):
    if factory.name not in ("chest_xray", "folder") or not factory.manual_dir:
        return
    from effnet_jax.data import kermany  # pylint: disable=g-import-not-at-top

    meta = builder.info.metadata or {}
    recorded = meta.get("source_fingerprint")
    if recorded is None:
        logging.getLogger("effnet_jax.data").warning(
            "%s was prepared before sources were fingerprinted: cannot check that it matches data.manual_dir=%r",
            builder.data_path,
            factory.manual_dir,
        )
        return
    raw = os.path.expanduser(factory.manual_dir)
    if not os.path.exists(raw):
        # Evaluating an old run whose raw folder is gone: the prepared copy is all there is.
        logging.getLogger("effnet_jax.data").warning(
            "data.manual_dir=%r no longer exists: using %s as prepared", factory.manual_dir, builder.data_path
        )
        return
    layout = _scan(factory)
    layout.close()
    if not str(recorded).startswith(kermany.FINGERPRINT_SCHEME + ":"):
        raise StalePreparedDataError(
            f"{builder.data_path} was prepared before file contents were fingerprinted (names and sizes only), "
            f"so a change to the files of data.manual_dir={factory.manual_dir!r} cannot be told: delete "
            f"{builder.data_path} to prepare again, or set data.data_dir to another directory"
        )
    now = layout.fingerprint()
    if now == recorded and meta.get("source") != layout.source:
        # Another folder (or the zip of this one) holding the very same files: the same data.
        logging.getLogger("effnet_jax.data").info(
            "data.manual_dir=%r is not %s, which %s was prepared from, but holds the same files (names, sizes "
            "and contents): using it",
            factory.manual_dir,
            meta.get("source"),
            builder.data_path,
        )
    if now != recorded:
        raise StalePreparedDataError(
            f"{builder.data_path} was prepared from {meta.get('source')} ({meta.get('source_num_files')} "
            f"files, fingerprint {recorded}) but data.manual_dir={factory.manual_dir!r} now lists "
            f"{sum(len(v) for v in layout.files.values())} files (fingerprint {now}); refusing to reuse "
            f"stale records (files added, removed or changed): delete {builder.data_path} to prepare again from data.manual_dir, or set "
            "data.data_dir to another directory" + _links_hint(factory, layout)
        )


def _links_hint(factory: BuilderFactory, layout) -> str:
    """Why a set prepared from links out of the folder no longer matches: they are not read unless asked."""
    outside = [] if factory.follow_links else layout.links_outside()
    if not outside:
        return ""
    return (
        f". {len(outside)} of its files are links leading outside the folder (e.g. {outside[0]}), not read "
        "unless data.follow_links=True: set it if the set was prepared from them on purpose"
    )


def read_part_metadata(builder) -> dict[str, splits_lib.PartMeta]:
    """Labels, patient ids and file names of every prepared split, in record order."""
    from tensorflow_datasets.core import decode  # pylint: disable=g-import-not-at-top

    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    classes = {"label": len(builder.info.features["label"].names)}
    metas = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})
        # Checked as listed: a downloaded set's record may hold anything (a label of 2**31 took GBs to count).
        records = prepared_files.read_split(source, f"{builder.data_path} {split}", classes)
        labels = np.array([r["label"] for r in records], np.int32)
        has = lambda key: bool(records) and key in records[0]
        metas[split] = splits_lib.PartMeta(
            labels=labels,
            patient_ids=[text(r["patient_id"]) for r in records] if has("patient_id") else None,
            file_names=[text(r["file_name"]) for r in records] if has("file_name") else None,
        )
    return metas
