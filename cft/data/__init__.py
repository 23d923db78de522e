"""Instruction data: records, loading (built-in demo, local files, hub ids), formatting and collation."""

from cft.data.records import Example

__all__ = ["Example"]
