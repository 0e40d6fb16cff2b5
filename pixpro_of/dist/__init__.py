"""Distributed backends behind one interface (pixpro_of.dist.backend)."""
