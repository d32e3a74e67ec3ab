"""relation: exemplar-based image editing with RelationAdapter on FLUX (prepare, train, infer, eval)."""

__version__ = "0.1.0"
