"""Builders: a run's config sections -> the model objects a recipe trains or scores (encoder + objective,
encoder + classification head) and its image data. Several recipes build the same things, and recipes never
import each other, so the builders live here, above the components they assemble and ``ptcli.build``'s safe
instantiation."""

from __future__ import annotations

from typing import Any

from ptcli.build import component_class, instantiate
from ptcli.errors import UsageError
from ptcli.models.classifier import ImageClassifier, SequenceClassifier
from ptcli.models.cloze import ClozeClassifier
from ptcli.objectives.mlm import MaskedLM, word_start_table
from ptcli.tokenizer import special_ids


def build_text_objective(cfg: Any, tok: Any, weights_from: str | None = None) -> Any:
    """Encoder (``cfg.model``) + text pre-training objective (``cfg.objective``) for tokenizer ``tok``: any
    objective class that declares ``modality = "text"`` (MLM, ELECTRA, a trusted package's ``MaskedLM``). It gets
    what it declares in ``needs`` (default: MaskedLM's) of ``special_ids``, ``mask_id``, ``word_start``, ``head``,
    ``pad_id``; the recipe uses its ``mask(blocks, generator)`` (the arguments of its ``forward``) and the
    ``ratios`` of its eval-mode output (``ptcli.objectives.mlm.evaluate_mlm``). An encoder class that brings its
    own pre-trained MLM head (``with_mlm_head``: a transformers checkpoint) keeps it; ``weights_from`` loads that
    checkpoint instead of ``model.path`` (the first start of ``init_from=hf:``)."""
    objective_cls = component_class(cfg.objective, "objective")
    declared = getattr(objective_cls, "modality", None)
    if declared != "text" or not callable(getattr(objective_cls, "mask", None)):
        raise UsageError(f"objective={cfg.objective._target_} declares modality={declared!r}; text pre-training "
                         "takes an objective that declares modality = 'text' and offers mask() (objective=mlm, "
                         "electra; README: Extending ptcli).")
    ids = special_ids(tok)
    head = None
    encoder_cls = component_class(cfg.model, "model")
    if hasattr(encoder_cls, "with_mlm_head"):
        kwargs = {k: v for k, v in cfg.model.items() if k != "_target_"}
        if weights_from is not None:
            kwargs.update(path=weights_from, random_init=False)
        encoder, head = encoder_cls.with_mlm_head(**kwargs)
    else:
        encoder = instantiate(cfg.model, "model", vocab_size=tok.get_vocab_size())
    available = {"mask_id": ids["mask"], "head": head, "special_ids": [i for i in ids.values() if i is not None],
                 "word_start": word_start_table(tok), "pad_id": ids["pad"]}
    needs = getattr(objective_cls, "needs", MaskedLM.needs)
    objective = instantiate(cfg.objective, "objective", encoder=encoder,
                            **{k: v for k, v in available.items() if k in needs})
    if getattr(objective, "encoder", None) is not encoder:
        raise UsageError(f"objective={cfg.objective._target_} does not keep the encoder it is given as .encoder, "
                         "which downstream commands use (README: Extending ptcli).")
    return objective



def build_image_objective(cfg: Any) -> Any:
    """Image encoder (``cfg.model``) + image pre-training objective (``cfg.objective``): any objective class that
    declares ``modality = "image"`` (SimCLR, BYOL, VICReg, Barlow Twins, MAE, or a trusted package's). What the recipe
    needs of it: the encoder it is given kept as ``.encoder`` (what ``finetune pretrained=``, the probes and
    ``embed`` use), and ``forward(images, generator=...)`` returning ``{"loss", "count"}``."""
    if cfg.get("objective") is None:
        raise UsageError("image pre-training needs an objective: objective=simclr, byol, vicreg, barlow_twins "
                         "or mae (model=vit).")
    declared = getattr(component_class(cfg.objective, "objective"), "modality", None)
    if declared != "image":
        raise UsageError(f"objective={cfg.objective._target_} declares modality={declared!r}; image pre-training "
                         "takes an objective that declares modality = 'image' (objective=simclr, byol, vicreg, "
                         "barlow_twins, mae; README: Extending ptcli).")
    encoder = instantiate(cfg.model, "model")
    if getattr(encoder, "modality", None) != "image":
        raise UsageError(f"objective={cfg.objective._target_} needs an image encoder: model=convnet or model=vit.")
    model = instantiate(cfg.objective, "objective", encoder=encoder)
    if getattr(model, "encoder", None) is not encoder:
        raise UsageError(f"objective={cfg.objective._target_} does not keep the encoder it is given as .encoder, "
                         "which downstream commands use (README: Extending ptcli).")
    return model


def _encoder_for(model_cfg: Any, head: str, **kwargs: Any) -> Any:
    """The encoder ``model_cfg`` names, which must declare that ``head`` fits it (``finetune_head``)."""
    declared = getattr(component_class(model_cfg, "model"), "finetune_head", None)
    if declared != head:
        raise UsageError(f"model={model_cfg._target_} declares finetune_head={declared!r}, so it cannot take a "
                         f"{head} head; fine-tune it with a matching model (README: Extending ptcli).")
    return instantiate(model_cfg, "model", **kwargs)


def build_classifier(model_cfg: Any, vocab_size: int, num_classes: int, pooling: str = "mean") -> SequenceClassifier:
    """A text classifier on the encoder ``model_cfg`` names."""
    encoder = _encoder_for(model_cfg, "sequence_classifier", vocab_size=vocab_size)
    return SequenceClassifier(encoder, num_classes, pooling=pooling)


def build_cloze_classifier(model_cfg: Any, tok: Any, label_ids: list[list[int]]) -> ClozeClassifier:
    """A cloze classifier (``head=cloze``): the encoder ``model_cfg`` names with an MLM head (ptcli's, or the
    transformers checkpoint's own, pre-trained or fresh as ``model.random_init`` says), read at the slot."""
    ids = special_ids(tok)
    encoder_cls = component_class(model_cfg, "model")
    head = None
    if hasattr(encoder_cls, "with_mlm_head"):
        encoder, head = encoder_cls.with_mlm_head(**{k: v for k, v in model_cfg.items() if k != "_target_"})
    else:
        encoder = _encoder_for(model_cfg, "sequence_classifier", vocab_size=tok.get_vocab_size())
    mlm = MaskedLM(encoder, special_ids=[i for i in ids.values() if i is not None], mask_id=ids["mask"], head=head)
    return ClozeClassifier(mlm, ids["mask"], label_ids)


def build_image_classifier(model_cfg: Any, num_classes: int) -> ImageClassifier:
    """An image classifier on the encoder ``model_cfg`` names."""
    return ImageClassifier(_encoder_for(model_cfg, "image_classifier"), num_classes)


def load_image_data(data_cfg: Any, seed: int) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """The ``data`` section's image splits ``{split: (x, y)}`` and class names; a text source is refused."""
    source = instantiate(data_cfg, "data", seed=seed)
    if getattr(source, "modality", "text") != "image":
        raise UsageError(f"data={source.describe()} is text; image models need data=digits or data=images.")
    return source.load_images()
