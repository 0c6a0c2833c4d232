"""Models: timm encoders (one channel, local weights only) and the heads tasks put on them."""
from cxrssl.models.backbones import Encoder, PretrainedWeightsError, create_encoder
from cxrssl.models.heads import Classifier, Decoder, PooledHead

__all__ = ["Encoder", "PretrainedWeightsError", "create_encoder", "Classifier", "Decoder", "PooledHead"]
