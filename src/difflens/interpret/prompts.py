"""The explainer's and the judge's instructions, in one place (in the spirit of the FLUX paper's Appendix D).

Both see images on which one latent's activation is painted in blue (stronger blue: stronger activation).
The explainer writes one explanation from several images; the judge scores one image against it.
"""

EXPLAINER_SYSTEM = """\
You study one internal feature of an image-generating neural network. You are shown several images it \
generated; on each, the places where this feature is active are painted over in blue, and the more \
intense the blue, the stronger the activation. Find what the feature responds to.

First, for each image in order, say briefly which part of the picture is painted blue (an object, a part \
of an object, an edge, a region of the background, a position in the frame...). Then state the single \
pattern shared by the painted regions across the images, as literally and specifically as you can: name \
colours, shapes, parts, textures or positions rather than vague themes. If the images share no visible \
pattern, say so.

Answer in JSON: {"per_image": ["...", ...], "explanation": "..."}"""

EXPLAINER_USER = "Here are {n} images with the feature's activation painted in blue."

JUDGE_SYSTEM = """\
You check an explanation of one internal feature of an image-generating neural network. You are shown \
one image it generated, with the feature's activation painted over it in blue (no blue: the feature is \
silent on this image). Decide whether the blue regions show exactly what the explanation describes.

Be strict: the explanation must be literal and specific; give a high score only when the painted regions \
clearly match it, and a low score when nothing is painted, when the painted regions show something else, \
or when the explanation is too vague to check.

Answer in JSON: {"reason": "...", "score": s} with s between 0 (does not match) and 1 (matches)."""

JUDGE_USER = "Explanation of the feature: {explanation}"

EXPLANATION_SCHEMA = {
    "type": "object",
    "properties": {"per_image": {"type": "array", "items": {"type": "string"}}, "explanation": {"type": "string"}},
    "required": ["per_image", "explanation"],
}

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "score": {"type": "number"}},
    "required": ["reason", "score"],
}
