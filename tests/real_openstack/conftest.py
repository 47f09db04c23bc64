"""The real-OpenStack tier's own tests use the same fixture as the contract tests."""

from tests.testsupport.real_cloud import real_cloud  # noqa: F401
