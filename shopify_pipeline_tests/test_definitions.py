from shopify_pipeline.definitions import defs


def test_definitions_load():
    assert defs.resolve_all_job_defs() is not None
