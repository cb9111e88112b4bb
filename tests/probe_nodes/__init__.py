"""Test-only ComfyUI nodes for tests/test_http_hostile.py, loaded as a custom node folder by the server it starts.

* `LikenessTestAnySource` outputs a value of any type, so a prompt can fill every linked input of any Likeness
  node and reach that node's own validation. It never runs: the prompts that use it must be refused at
  validation, and if one is not, running it fails loudly.
* `LikenessTestSink` is an output node that takes a value of any type, so any node's output can end a prompt.
"""


class _AnyType(str):
    """ComfyUI compares socket types with `!=`; this type is equal to every other (as core's `*` sockets are)."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


ANY = _AnyType("*")


class LikenessTestAnySource:
    CATEGORY = "testing"
    RETURN_TYPES = (ANY,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        raise RuntimeError("LikenessTestAnySource ran: the prompt should have been refused at validation.")


class LikenessTestSink:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY, {})}}

    def run(self, value):
        return {}


NODE_CLASS_MAPPINGS = {"LikenessTestAnySource": LikenessTestAnySource, "LikenessTestSink": LikenessTestSink}
