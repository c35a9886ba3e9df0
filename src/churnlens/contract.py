"""The model's contract: what a trained model needs and carries, saved in its MLflow metadata.

Training writes it, scoring (either engine), evaluation, promotion and the benchmarks read it;
one typed object instead of string-keyed look-ups scattered over the package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class ModelContract:
    numeric_features: list[str] = field(default_factory=list)
    categorical_features: list[str] = field(default_factory=list)
    holdout_cutoff: str | None = None
    # The cutoffs whose labels the deployed model was fitted and calibrated on: a later holdout
    # that none of them reaches past can judge it out of time.
    deployed_train_cutoffs: list[str] = field(default_factory=list)
    deployed_calibration_cutoffs: list[str] = field(default_factory=list)
    # The reference population for drift checks (see churnlens.drift).
    drift_profile: dict = field(default_factory=dict)
    run_id: str | None = None

    @property
    def features(self) -> list[str]:
        """The model's input columns, in the order the pipeline expects them."""
        return [*self.numeric_features, *self.categorical_features]

    def missing_from(self, columns: object) -> list[str]:
        """The model's inputs that ``columns`` lacks."""
        present = set(columns)
        return [name for name in self.features if name not in present]

    def to_metadata(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "run_id" or v is not None}

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelContract:
        """The contract of a saved model; MLflow's own keys (registered name, version) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in metadata.items() if k in known})
