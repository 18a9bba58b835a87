"""The product model: backbone -> pooled features -> L2-normalised embedding -> fine and coarse heads.

The graph takes uint8 NHWC pixels and normalises inside, so every runtime gets the same small tensor.
Both category heads are cosine classifiers (scaled dot products of the normalised embedding with
normalised class weights). That lets the untrained model ship *prototype* heads: each class weight is the
mean embedding of the catalogue photos of that class, i.e. categories come from the best matching
catalogue products. Fine-tuning later trains the same heads; the outputs, and so the API, do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vision.backbones import REGISTRY, create_backbone


class CosineHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=False)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * embedding @ F.normalize(self.weight, dim=-1).t()

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        self.weight.copy_(F.normalize(prototypes, dim=-1))


class ProductModel(nn.Module):
    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        num_fine: int = 1,
        num_coarse: int = 1,
        embedding_dim: int | None = None,
        pretrained: bool = True,
        head_scale: float = 20.0,
    ):
        super().__init__()
        cfg = REGISTRY[backbone]
        self.backbone_name = backbone
        self.input_size = cfg.input_size
        self.backbone = create_backbone(backbone, pretrained=pretrained)
        self.backbone.reset_classifier(0)  # keep global pooling, drop the ImageNet classifier
        features = self.backbone.num_features
        # None: the embedding is the pooled feature itself (the pretrained model, before fine-tuning).
        self.projection = nn.Identity() if embedding_dim is None else nn.Linear(features, embedding_dim)
        self.embedding_dim = features if embedding_dim is None else embedding_dim
        self.fine_head = CosineHead(self.embedding_dim, num_fine, head_scale)
        self.coarse_head = CosineHead(self.embedding_dim, num_coarse, head_scale)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)
        self.coarse_from_fine = 0.0  # see set_hierarchy; 0: coarse_probs is the coarse head alone
        self.register_buffer("fine_to_coarse", torch.zeros(num_fine, num_coarse), persistent=False)
        self.gallery_weight = 0.0  # see set_gallery; 0: the category outputs are the heads alone
        self.gallery_k, self.gallery_temperature = 1, 0.05
        self.register_buffer("gallery", torch.zeros(0, self.embedding_dim), persistent=False)
        self.register_buffer("gallery_votes", torch.zeros(0, num_fine), persistent=False)

    def set_hierarchy(self, fine_to_coarse: list[int], coarse_from_fine: float) -> None:
        """Blend into coarse_probs the fine head's probabilities summed over each coarse category:
        coarse_probs = (1 - w) * coarse head + w * sum of fine_probs within the coarse category.

        Why: every fine category sits in exactly one coarse one, and the fine head is trained on the finer,
        harder signal; its summed probabilities pull the coarse answer towards the fine one (fewer
        "Granny-Smith, but a Pear" answers). The weight is an export-time choice made on validation photos and
        baked into the graph, so every runtime serves the same blend.
        """
        matrix = torch.zeros_like(self.fine_to_coarse)
        matrix[torch.arange(len(fine_to_coarse)), torch.tensor(fine_to_coarse)] = 1.0
        self.fine_to_coarse.copy_(matrix)
        self.coarse_from_fine = float(coarse_from_fine)

    def set_gallery(self, embeddings: torch.Tensor, fine: list[int], k: int, temperature: float, weight: float) -> None:
        """Blend into both category outputs the vote of the k most similar reference photos:
        fine_probs = (1 - w) * fine head + w * vote, vote = the softmax of (cosine / temperature) over the k
        nearest reference embeddings, summed per fine label; coarse_probs likewise, the vote summed per
        coarse category (set_hierarchy gives the mapping, so call it first).

        Why: the heads compress each product into one class weight, while the embedding keeps the
        look of every training photo; a shopper photo very like one training photo is best labelled by
        that photo (photo-to-photo 1-NN beat the fine head on the Grocery Store photos). The reference
        photos are the training split, chosen at export and baked into the graph as constants (512-d x
        2,640 photos: 5.4 MB and one small matrix product), so every runtime serves the same answer and
        the API contract does not change.
        """
        if not 0.0 < weight <= 1.0 or k < 1 or temperature <= 0:
            raise ValueError(
                f"gallery needs 0 < weight <= 1, k >= 1, temperature > 0 (got {weight}, {k}, {temperature})"
            )
        if len(embeddings) != len(fine) or embeddings.shape[1:] != (self.embedding_dim,):
            raise ValueError(f"gallery: {len(fine)} labels for embeddings of shape {tuple(embeddings.shape)}")
        votes = torch.zeros(len(fine), self.fine_head.weight.shape[0])
        votes[torch.arange(len(fine)), torch.tensor(fine)] = 1.0
        self.gallery = F.normalize(embeddings.float(), dim=-1)
        self.gallery_votes = votes
        self.gallery_k, self.gallery_temperature, self.gallery_weight = (
            min(k, len(fine)),
            float(temperature),
            float(weight),
        )

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float NCHW, normalised the way the backbone was trained."""
        x = pixels.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std

    def embed_normalised(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(x)), dim=-1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedding = self.embed_normalised(self.normalise(pixels))
        fine = self.fine_head(embedding).softmax(dim=-1)
        coarse = self.coarse_head(embedding).softmax(dim=-1)
        if self.coarse_from_fine > 0:
            coarse = (1 - self.coarse_from_fine) * coarse + self.coarse_from_fine * (fine @ self.fine_to_coarse)
        if self.gallery_weight > 0:
            top, nearest = (embedding @ self.gallery.T).topk(self.gallery_k, dim=-1)
            share = (top / self.gallery_temperature).softmax(dim=-1)
            vote = (share.unsqueeze(-1) * self.gallery_votes[nearest]).sum(dim=1)
            w = self.gallery_weight
            fine = (1 - w) * fine + w * vote
            coarse = (1 - w) * coarse + w * (vote @ self.fine_to_coarse)
        return embedding, fine, coarse
