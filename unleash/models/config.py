"""The model configs: dataclasses saved with the weights, one per model kind. Reading one back is
strict: unknown keys, values of another type, non-finite or negative numbers and grids too large
for any scan are errors, said before a network is built (a config comes from a file a user may
have edited). Standard library only: a model file's config is checked before torch is imported;
the networks in the other files of this package are built from these."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

# 512^3 voxels: a work or volume grid beyond it is a typo, not a scan (a 1 mm lung box is ~25 M)
MAX_GRID_VOXELS = 2 ** 27
MAX_CODES = 2 ** 15 - 1  # token grids are stored as int16


def _fits(value, declared: str) -> bool:
    """Whether `value` is of the declared type (the annotation's text); numbers must be finite
    and not negative: no setting of a model, a training loop or a task here is a negative quantity."""
    if declared.endswith(" | None"):
        return value is None or _fits(value, declared[: -len(" | None")])
    if declared.startswith("list[") and declared.endswith("]"):
        return isinstance(value, list) and all(_fits(item, declared[5:-1]) for item in value)
    if declared in ("int", "float"):
        allowed = int if declared == "int" else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if declared in ("bool", "str"):
        return isinstance(value, bool if declared == "bool" else str)
    return True  # a nested config, checked by its own class


_SAID = {"int": "an integer >= 0", "float": "a finite number >= 0", "bool": "true or false", "str": "text",
         "list[int]": "a list of integers >= 0", "list[float]": "a list of finite numbers >= 0"}


def _said(declared: str) -> str:
    if declared.endswith(" | None"):
        return _said(declared[: -len(" | None")]) + " or null"
    return _SAID.get(declared, declared)


def check_values(cls, values: dict, section: str) -> None:
    """Each given value has its field's type; the first that does not is named."""
    for f in fields(cls):
        declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if f.name in values and not _fits(values[f.name], declared):
            raise ValueError(f"{section}.{f.name} must be {_said(declared)}; got {values[f.name]!r}")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_grid(shape: list[int], name: str, smallest: int = 1) -> None:
    """A grid shape: three sizes of at least `smallest`, and not more voxels than any scan has."""
    require(len(shape) == 3 and min(shape) >= smallest,
            f"{name} must be three sizes of at least {smallest} (got {shape})")
    require(math.prod(shape) <= MAX_GRID_VOXELS,
            f"{name} {shape} has {math.prod(shape):,} voxels, more than the {MAX_GRID_VOXELS:,} of any scan")


def from_dict_strict(cls, values: dict, kind: str):
    """A config dataclass from its dict: unknown keys, another kind and values of the wrong type
    or range are errors, not silently dropped or left to fail inside the network."""
    if not isinstance(values, dict):
        raise ValueError(f"a {kind} config is a JSON object, not {type(values).__name__}")
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {sorted(unknown)}")
    if values.get("kind", kind) != kind:
        raise ValueError(f"a {values['kind']!r} config where a {kind!r} config belongs")
    check_values(cls, values, kind)
    return cls(**values)


MAX_SQUARING_STEPS = 16  # exp(v) as 2^16 compositions: far past where the field stops changing


@dataclass
class RegistrationConfig:
    kind: str = "registration"
    shape_xyz: list[int] = field(default_factory=lambda: [153, 113, 161])  # work grid, voxels
    spacing_mm: float = 2.0  # work grid spacing; 1 mm inputs are averaged onto it
    lattice_mm: float = 4.0  # where the networks see the images and warp them
    # The networks predict velocities at twice the lattice spacing: the velocity is smooth, the
    # first convolution strides by 2, and scaling and squaring there costs 1/8 as much.
    channels: list[int] = field(default_factory=lambda: [16, 32, 32, 64])
    squaring_steps: int = 5

    def __post_init__(self):
        check_grid(self.shape_xyz, "registration.shape_xyz", smallest=8)
        require(self.spacing_mm > 0 and self.lattice_mm > 0,
                f"registration.spacing_mm and lattice_mm must be above 0 (got {self.spacing_mm}, {self.lattice_mm})")
        lattice = [round((n - 1) * self.spacing_mm / self.lattice_mm) + 1 for n in self.shape_xyz]
        check_grid(lattice, "registration lattice (shape_xyz at lattice_mm)", smallest=2)
        require(len(self.channels) > 0 and min(self.channels) > 0,
                f"registration.channels must be one or more positive sizes (got {self.channels})")
        require(self.squaring_steps <= MAX_SQUARING_STEPS,
                f"registration.squaring_steps must be at most {MAX_SQUARING_STEPS} (got {self.squaring_steps})")

    @property
    def velocity_mm(self) -> float:
        return 2 * self.lattice_mm

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> RegistrationConfig:
        return from_dict_strict(RegistrationConfig, values, "registration")



@dataclass
class VQAEConfig:
    kind: str = "vqae"
    channels: list[int] = field(default_factory=lambda: [48, 48, 64, 64, 128, 192, 256, 384])
    strides: list[int] = field(default_factory=lambda: [1, 2, 1, 2, 1, 2, 1, 2])
    codebook_size: int = 1024  # the code vectors have channels[-1] (384) dimensions
    volume_shape_ijk: list[int] = field(default_factory=lambda: [256, 208, 256])
    spacing_mm: float = 1.0
    # False: only the codebook and decoder were trained, to decode given tokens (e.g. the paper's token
    # files); such a model samples and decodes, but cannot encode
    encoder: bool = True

    def __post_init__(self):
        require(len(self.channels) > 0 and min(self.channels) > 0 and min(self.strides, default=1) > 0,
                f"vqae.channels and strides must be positive sizes (got {self.channels}, {self.strides})")
        require(1 < self.codebook_size <= MAX_CODES, f"vqae.codebook_size must lie in 2..{MAX_CODES} (got {self.codebook_size})")
        check_grid(self.volume_shape_ijk, "vqae.volume_shape_ijk")
        require(self.spacing_mm > 0, f"vqae.spacing_mm must be above 0 (got {self.spacing_mm})")
        if len(self.channels) != len(self.strides):
            raise ValueError("the VQ-AE needs one stride per channel entry")
        if any(n % self.downsampling for n in self.volume_shape_ijk):
            raise ValueError(f"volume shape {self.volume_shape_ijk} is not divisible by {self.downsampling}")

    @property
    def downsampling(self) -> int:
        return math.prod(self.strides)

    @property
    def token_shape_ijk(self) -> list[int]:
        return [n // self.downsampling for n in self.volume_shape_ijk]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> VQAEConfig:
        return from_dict_strict(VQAEConfig, values, "vqae")



@dataclass
class DenoiserConfig:
    kind: str = "denoiser"
    codebook_size: int = 1024  # vocabulary = codes + the mask id
    token_shape_ijk: list[int] = field(default_factory=lambda: [16, 13, 16])
    layers: int = 12
    width: int = 512
    heads: int = 16
    feed_forward: int = 1024
    dropout: float = 0.1  # residual and feed-forward dropout while training, as nn.TransformerEncoderLayer

    def __post_init__(self):
        require(min(self.layers, self.width, self.heads, self.feed_forward) > 0,
                "denoiser.layers, width, heads and feed_forward must be above 0")
        require(1 < self.codebook_size <= MAX_CODES,
                f"denoiser.codebook_size must lie in 2..{MAX_CODES} (got {self.codebook_size})")
        check_grid(self.token_shape_ijk, "denoiser.token_shape_ijk")
        require(self.dropout < 1, f"denoiser.dropout must lie in [0, 1) (got {self.dropout})")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def tokens(self) -> int:
        return math.prod(self.token_shape_ijk)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> DenoiserConfig:
        return from_dict_strict(DenoiserConfig, values, "denoiser")



@dataclass
class RefinerConfig:
    kind: str = "refiner"
    factor: int = 2  # fine voxels per coarse voxel along each axis
    width: int = 16  # channels of the hidden convolutions
    layers: int = 3  # 3 x 3 x 3 convolutions; the middle ones dilated by 2 (receptive field: 1 + 2 + 4 (layers - 2) + 2)

    def __post_init__(self):
        require(self.factor >= 1 and self.width >= 1 and self.layers >= 2,
                f"refiner.factor and width must be 1 or more and layers 2 or more (got {self.factor}, "
                f"{self.width}, {self.layers})")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> RefinerConfig:
        return from_dict_strict(RefinerConfig, values, "refiner")


@dataclass
class SamplerConfig:
    kind: str = "sampler"
    vqae: VQAEConfig = field(default_factory=VQAEConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    refiner: RefinerConfig | None = None  # None: the decoder's probabilities are upsampled trilinearly

    def __post_init__(self):
        if self.denoiser.codebook_size != self.vqae.codebook_size:
            raise ValueError(f"the denoiser knows {self.denoiser.codebook_size} codes, the VQ-AE has {self.vqae.codebook_size}")
        if list(self.denoiser.token_shape_ijk) != self.vqae.token_shape_ijk:
            raise ValueError(f"the denoiser's token grid {self.denoiser.token_shape_ijk} is not the VQ-AE's "
                             f"{self.vqae.token_shape_ijk}")
        if self.refiner is not None and self.refiner.factor != self.vqae.spacing_mm:
            raise ValueError(f"the refiner's factor {self.refiner.factor} does not bring the decoder's "
                             f"{self.vqae.spacing_mm} mm to the written volumes' 1 mm")

    def to_dict(self) -> dict:
        parts = {"refiner": self.refiner.to_dict()} if self.refiner else {}
        return {"kind": self.kind, "vqae": self.vqae.to_dict(), "denoiser": self.denoiser.to_dict(), **parts}

    @staticmethod
    def from_dict(values: dict) -> SamplerConfig:
        require(isinstance(values, dict), f"a sampler config is a JSON object, not {type(values).__name__}")
        values = dict(values)
        parts = {"vqae": VQAEConfig.from_dict(values.pop("vqae", {})),
                 "denoiser": DenoiserConfig.from_dict(values.pop("denoiser", {}))}
        if values.get("refiner") is not None:
            parts["refiner"] = RefinerConfig.from_dict(values.pop("refiner"))
        return from_dict_strict(SamplerConfig, {**values, **parts}, "sampler")


# kind -> its config class: the only list of model kinds
CONFIGS = {"registration": RegistrationConfig, "vqae": VQAEConfig, "denoiser": DenoiserConfig, "sampler": SamplerConfig}
