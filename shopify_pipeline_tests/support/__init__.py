"""Test helpers shared by the test modules: fakes, proxies and fixtures that are not tests."""
