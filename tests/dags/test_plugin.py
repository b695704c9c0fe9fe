from ndid_links import NdidPlugin, browse_url


def test_plugin_registers_the_records_link():
    assert [link.name for link in NdidPlugin.global_operator_extra_links] == ["NDID records"]


def test_browse_urls():
    prefix = "s3://ndid/decisions/records/"
    assert browse_url("", prefix).startswith("https://s3.console.aws.amazon.com/s3/buckets/ndid?prefix=decisions/")
    assert browse_url("http://127.0.0.1:8333", prefix) == ""  # the local filer UI is closed on purpose
    assert browse_url("https://minio.example.com", prefix).startswith("https://minio.example.com/ndid?prefix=")
