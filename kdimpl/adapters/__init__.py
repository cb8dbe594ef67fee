"""Learnable pieces that papers bundle into their losses, kept apart so both sides can share or skip them."""

from .channel import ChannelAdapter

__all__ = ["ChannelAdapter"]
