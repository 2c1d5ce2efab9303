"""VideoMarathon's taxonomy: six clip-caption perspectives, six QA topics, 22 tasks.

Task names and topics are the official taxonomy figure's (../shared/reference/videomarathon_tasks.md);
the one-line definitions are ours, written from the paper's description (its own task descriptions
are an image, App. A Figure 11).
"""
from __future__ import annotations

# Clip-level caption perspectives (paper §3), in the order the captioner is asked for them.
PERSPECTIVES = {
    "temporality": "how the clip unfolds over time: what happens first, next and last, and how long",
    "spatiality": "where things are relative to each other and to the camera, and how they move",
    "object": "the objects visible, with their attributes (colour, shape, size, count, state)",
    "action": "the actions people, animals or objects perform, and who does what to what",
    "scene": "the setting: place, environment, lighting, and any change of scene",
    "summary": "an overall summary of the clip in two or three sentences",
}

# topic -> {task: definition}
TOPICS: dict[str, dict[str, str]] = {
    "temporality": {
        "Temporal Perception": "when in the video something happens (a time or a clip)",
        "Duration Perception": "how long an action, event or state lasts",
        "Temporal Reasoning": "why or how events relate in time (before / after / during, cause)",
        "Temporal Gap Estimation": "how much time passes between two moments or events",
        "Temporal Order": "the order in which several things happen",
    },
    "spatiality": {
        "Spatial Perception": "where something is, relative to other things or to the camera",
        "Spatial Reasoning": "inferences from spatial layout and movement across the video",
    },
    "object": {
        "Object Recognition": "which object is shown or used",
        "Object Attribute": "an object's colour, shape, size, material, count or state",
        "Object Interaction": "how objects or people act on each other",
        "Object Reasoning": "why an object is there or what it is for, from the whole video",
        "Object Existence": "whether an object ever appears in the video",
        "Object Permanence": "where an object is after it leaves the view, or what became of it",
    },
    "action": {
        "Action Recognition": "which action is performed",
        "Action Localization": "when in the video an action happens",
        "Action Sequence": "the order of a series of actions",
        "Action Reasoning": "the purpose or consequence of an action",
    },
    "scene": {
        "Scene Recognition": "what kind of place or setting is shown",
        "Scene Transition": "how and when the setting changes",
    },
    "event": {
        "Event Sequence": "the order of the video's events",
        "Key Event Extraction": "the most important events of the video",
        "Overall Summarization": "a summary of the whole video",
    },
}

TASK_TOPIC = {task: topic for topic, tasks in TOPICS.items() for task in tasks}
# Answered by the global description, not generated (paper §3).
SUMMARY_TASK = "Overall Summarization"
assert len(TASK_TOPIC) == 22
