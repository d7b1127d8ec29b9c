"""Study configuration: schema validation with defaults, and cross-reference checks.

The schema is package data, `ferbench/config.schema.yaml`, so an installed ferbench validates
without the repository; this module is the one place that reads it, so the CLI, the
Snakefile and the tests agree.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A configuration that the workflow must refuse before running anything."""


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that `default:` values are filled in while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(config: dict, schema: dict | None = None) -> dict:
    """Return a copy of `config` with defaults filled in, or raise ConfigError naming the bad key."""
    config = copy.deepcopy(config)
    validator = _Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ConfigError(f"config key '{_key_path(err)}': {err.message}")
    _check_references(config)
    _add_leak_twins(config)
    return config


#: The image-level twin of protocol P (`leak_twin: true`) is the protocol P + this suffix.
LEAK_TWIN_SUFFIX = "_image_twin"


def _add_leak_twins(config: dict) -> None:
    """For each protocol with `leak_twin: true`, add its image-level twin (same keys, kind
    image_kfold) and a copy of each of its studies under the twin, so every stage treats
    the twin as an ordinary protocol. Idempotent: a validated config validates unchanged."""
    for name, protocol in list(config["protocols"].items()):
        if not protocol.get("leak_twin"):
            continue
        if protocol["kind"] == "image_kfold":
            raise ConfigError(f"config key 'protocols.{name}.leak_twin': {name} is image-level "
                              "already")
        twin = name + LEAK_TWIN_SUFFIX
        config["protocols"].setdefault(twin, {
            **{k: v for k, v in protocol.items() if k != "leak_twin"}, "kind": "image_kfold"})
        studied = {(s["dataset"], s["protocol"]) for s in config["studies"]}
        for study in list(config["studies"]):
            if study["protocol"] == name and (study["dataset"], twin) not in studied:
                config["studies"].append({**copy.deepcopy(study), "protocol": twin})


def _check_references(config: dict) -> None:
    """Studies must name datasets, protocols and models that exist; a face option must
    apply to the dataset's detector."""
    from ferbench.models import REGISTRY

    for name, dataset in config["datasets"].items():
        faces = dataset.get("faces", {})
        if faces.get("detect_scale", 1) != 1 and faces.get("detector") != "haar":
            raise ConfigError(f"config key 'datasets.{name}.faces.detect_scale': Haar only "
                              f"(the dataset's detector is {faces.get('detector')})")
    for name, protocol in config["protocols"].items():
        test_dataset = protocol.get("test_dataset")
        if test_dataset is not None and test_dataset not in config["datasets"]:
            raise ConfigError(
                f"config key 'protocols.{name}.test_dataset': unknown dataset '{test_dataset}' "
                f"(defined: {', '.join(config['datasets'])})"
            )
    for i, study in enumerate(config["studies"]):
        if study["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"config key 'studies.{i}.dataset': unknown dataset '{study['dataset']}' "
                f"(defined: {', '.join(config['datasets'])})"
            )
        if study["protocol"] not in config["protocols"]:
            raise ConfigError(
                f"config key 'studies.{i}.protocol': unknown protocol '{study['protocol']}' "
                f"(defined: {', '.join(config['protocols'])})"
            )
        if config["protocols"][study["protocol"]].get("test_dataset") == study["dataset"]:
            raise ConfigError(
                f"config key 'studies.{i}.protocol': cross-dataset protocol "
                f"'{study['protocol']}' tests on the study's own dataset '{study['dataset']}'"
            )
        for j, model in enumerate(study["models"]):
            if model not in REGISTRY:
                raise ConfigError(
                    f"config key 'studies.{i}.models.{j}': unknown model '{model}' "
                    f"(registered: {', '.join(REGISTRY)})"
                )
        if "pretrain" in study:
            _check_pretrain(config, study, f"studies.{i}.pretrain")
    for name, overrides in config["models"].items():
        _check_hyperparameters(name, overrides, f"models.{name}")
    study_blocks(config)  # names a study block that is not a model's, or two that disagree
    for study in config["studies"]:  # a trunk key that disagrees with the model started from,
        for model in study["models"]:  # an ensemble's members
            if REGISTRY[model].starts_from or REGISTRY[model].combines:
                recipe(config, study["dataset"], study["protocol"], model)


def _check_hyperparameters(model: str, overrides: dict, key: str) -> None:
    """A block of hyperparameters names a registered model and only keys that model has."""
    from ferbench.models import REGISTRY

    if model not in REGISTRY:
        raise ConfigError(f"config key '{key}': unknown model (registered: {', '.join(REGISTRY)})")
    known = REGISTRY[model].hyperparameters()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"config key '{key}.{unknown[0]}': not a hyperparameter of {model} "
                          f"(it has: {', '.join(sorted(known))})")
    try:  # values the model refuses (an evaluation-only model's epochs)
        REGISTRY[model].hyperparameters(overrides)
    except KeyError as err:
        raise ConfigError(f"config key '{key}': {err.args[0]}") from None


def study_blocks(config: dict) -> dict[tuple[str, str, str], tuple[str, dict]]:
    """Each (dataset, protocol, model) training's own hyperparameters and their config key,
    from the study entry whose dataset and protocol it trains on, or from the `pretrain:`
    block that asks for it. One training has one recipe: two blocks that give it different
    values are refused."""
    blocks: dict[tuple[str, str, str], tuple[str, dict]] = {}
    for i, study in enumerate(config["studies"]):
        owners = [(f"studies.{i}.hyperparameters", study)]
        if "pretrain" in study:
            owners.append((f"studies.{i}.pretrain.hyperparameters", study["pretrain"]))
        for key, owner in owners:
            for model, block in owner.get("hyperparameters", {}).items():
                _check_hyperparameters(model, block, f"{key}.{model}")
                training = (owner["dataset"], owner["protocol"], model)
                earlier = blocks.setdefault(training, (f"{key}.{model}", block))
                if earlier[1] != block:
                    raise ConfigError(
                        f"config key '{key}.{model}': {model} on {training[0]}/{training[1]} "
                        f"already has other hyperparameters at '{earlier[0]}' (one training, "
                        "one recipe)")
    return blocks


def recipe_blocks(config: dict, dataset: str, protocol: str, model: str
                  ) -> list[tuple[str, dict]]:
    """The config blocks one training's recipe is read from, weakest first, each with its
    key: the config's `models.<name>`, then the study's own block (those that exist)."""
    blocks = [(f"models.{model}", config["models"][model])] if model in config["models"] else []
    owned = study_blocks(config).get((dataset, protocol, model))
    return blocks + [owned] if owned else blocks


def recipe(config: dict, dataset: str, protocol: str, model: str) -> dict:
    """The effective hyperparameters of one training, resolved in this one place:
    the model's paper defaults < the config's `models.<name>` < the study's own block. A
    model that starts from another's weights takes that one's trunk keys (ModelSpec.shares);
    a block that sets one of them to another value is refused, not overridden. An
    ensemble's recipe holds its members' (`member_recipes`)."""
    from ferbench.models import get

    spec = get(model)
    blocks = recipe_blocks(config, dataset, protocol, model)
    overrides = {name: value for _, block in blocks for name, value in block.items()}
    if spec.starts_from:
        start = recipe(config, dataset, protocol, spec.starts_from)
        for key, block in blocks:
            for name in spec.shares:
                if name in block and block[name] != start[name]:
                    raise ConfigError(
                        f"config key '{key}.{name}': {model} builds the trunk "
                        f"{spec.starts_from} trained, whose {name} is {start[name]!r} here "
                        "(leave it unset: it is taken from there)")
        overrides.update({name: start[name] for name in spec.shares})
    if spec.combines:
        overrides.update(_member_recipes(config, dataset, protocol, model, blocks, overrides))
    return spec.hyperparameters(overrides)


def members(config: dict, dataset: str, protocol: str, model: str) -> list[str]:
    """The models whose votes `model` averages on this study (an ensemble's `members`), or
    none: what its jobs wait for and whose recipes its DVC stage reads."""
    from ferbench.models import get

    return recipe(config, dataset, protocol, model)["members"] if get(model).combines else []


def _member_recipes(config: dict, dataset: str, protocol: str, model: str,
                    blocks: list[tuple[str, dict]], overrides: dict) -> dict:
    """An ensemble's `member_recipes`, from its members' own recipes (each another model of
    the same study), and its `input_size`: the dataset's face crop size unless set."""
    from ferbench import paths
    from ferbench.models import get
    from ferbench.models.ensemble import DEFAULTS, vote_error

    members = overrides.get("members", [])
    key = next((f"{k}.members" for k, block in reversed(blocks) if "members" in block),
               f"models.{model}.members")
    studied = paths.study_models(config).get((dataset, protocol), [])
    if len(members) < 2:
        raise ConfigError(f"config key '{key}': {model} on {dataset}/{protocol} needs two or "
                          f"more members (models of the study: {', '.join(studied)})")
    for name in members:
        if name not in studied or get(name).combines or get(name).extra_channels:
            raise ConfigError(f"config key '{key}': {name!r} is not a member {model} can "
                              f"have: another model of {dataset}/{protocol} without extra "
                              f"input channels (its models: {', '.join(studied)})")
    for block_key, block in blocks:
        for filled in ("member_recipes", "members_from"):
            if filled in block:
                raise ConfigError(f"config key '{block_key}.{filled}': filled in from the "
                                  "members' own recipes and jobs (leave it unset)")
        error = vote_error(block.get("vote", DEFAULTS["vote"]),
                           block.get("vote_step", DEFAULTS["vote_step"]))
        if error:
            raise ConfigError(f"config key '{block_key}.{error[0]}': {error[1]}")
    return {"member_recipes": {name: recipe(config, dataset, protocol, name) for name in members},
            "input_size": overrides.get("input_size",
                                        config["datasets"][dataset]["faces"]["size"])}


def _check_pretrain(config: dict, study: dict, key: str) -> None:
    """A pretraining stage names a defined dataset and protocol other than the study's own,
    and at least one of the study's models can start from other weights."""
    from ferbench.models import REGISTRY

    pretrain = study["pretrain"]
    for field, defined in (("dataset", config["datasets"]), ("protocol", config["protocols"])):
        if pretrain[field] not in defined:
            raise ConfigError(f"config key '{key}.{field}': unknown {field} "
                              f"'{pretrain[field]}' (defined: {', '.join(defined)})")
    if (pretrain["dataset"], pretrain["protocol"]) == (study["dataset"], study["protocol"]):
        raise ConfigError(f"config key '{key}': a study cannot pretrain on its own dataset "
                          "and protocol")
    if not any(REGISTRY[model].can_pretrain for model in study["models"]):
        able = ", ".join(name for name, spec in REGISTRY.items() if spec.can_pretrain)
        raise ConfigError(f"config key '{key}': none of {', '.join(study['models'])} can start "
                          f"from pretrained weights (models that can: {able})")


def load(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return validate(raw)
