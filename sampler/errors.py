"""Errors the core raises for bad input; each message says what went wrong and what to do instead."""


class DMD2Error(Exception):
    """Base class of every error this pack raises on purpose."""


class CatalogError(DMD2Error):
    """models.json (or an entry built in code) breaks a rule that keeps downloads safe and hosts consistent."""


class UnknownModelError(DMD2Error):
    """A catalog id that models.json does not have; the message lists the valid ids."""


class DownloadError(DMD2Error):
    """A download could not be completed; nothing was left under the file's final name."""


class OfflineError(DownloadError):
    """The Hub cannot be reached (HF_HUB_OFFLINE or no network); the message says where to put the file by hand."""


class DiskSpaceError(DownloadError):
    """Not enough free space in the models folder for the file about to be downloaded."""


class ChecksumError(DMD2Error):
    """A file's size or sha256 is not the catalog's: it is damaged, truncated or a different file."""


class UnsafeFileError(DMD2Error):
    """A pickle file that would need to run code to load: refused, never executed."""


class CorruptFileError(DMD2Error):
    """A checkpoint file that cannot be read (truncated download, not a model file, bad header)."""


class WrongKindError(DMD2Error):
    """A file of one kind (UNet, full checkpoint, LoRA, VAE) used where another is needed."""


class BaseMismatchError(DMD2Error):
    """A UNet or LoRA made for one base model (SD1.5, SDXL) applied to another."""


class ModelNotFoundError(DMD2Error):
    """A model spec that is neither an existing file nor a catalog id."""
