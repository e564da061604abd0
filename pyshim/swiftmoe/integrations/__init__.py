"""Integrations of SwiftMoE with training frameworks (torchtitan)."""
