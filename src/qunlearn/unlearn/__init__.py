"""Unlearning: losses (GA, NPO, GDR, KLR), the method registry, SURE saliency, and one accelerate trainer."""
