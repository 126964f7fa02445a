"""PEFT's LoRA variants as methods: LoRA's plan and budgets, one ``LoraConfig`` option more.

- ``common``: the shared plan and build (a variant subclasses ``Lora``);
- ``dora``: DoRA, magnitude and direction (``use_dora``), and on a 4-bit base (qdora);
- ``pissa``: PiSSA, started on the principal singular directions (``init_lora_weights="pissa"``),
  saved as plain LoRA for the unmodified base;
- ``rslora``: rsLoRA, scaled by alpha / sqrt(r) (``use_rslora``), and on a 4-bit base (qrslora);
- ``eva``: EVA, started from the SVD of the layers' inputs on the training data, ranks redistributed
  (``init_lora_weights="eva"``, ``initialize_lora_eva_weights``).

PiSSA has no 4-bit variant: its SVD needs the weights in full precision (PEFT refuses a 4-bit
weight), and the residual it leaves would have to be quantised again. EVA has none either: nothing
here has tested its input SVD on bitsandbytes' layers.
"""

from adarank.methods.variants.dora import Dora, DoraPlan, QDora, dora_parameters
from adarank.methods.variants.eva import Eva, EvaArguments, EvaPlan
from adarank.methods.variants.pissa import Pissa, PissaArguments, PissaPlan
from adarank.methods.variants.rslora import QRsLora, RsLora, RsLoraPlan

__all__ = ["Dora", "DoraPlan", "Eva", "EvaArguments", "EvaPlan", "Pissa", "PissaArguments", "PissaPlan", "QDora",
           "QRsLora", "RsLora", "RsLoraPlan", "dora_parameters"]
