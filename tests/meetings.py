"""Generated meeting transcripts (no audio): agenda topics talked through by named people, with the small talk,
decisions, questions and commitments real meetings have, as transcript segments of 6-12 s. Seeded, so a
figure or a sample summary can be made again. Used by the summary benchmark and the summary samples."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Topic:
    name: str  # "the mobile release"
    facts: tuple[str, ...]  # statements about it
    tasks: tuple[str, ...]  # things someone can do about it ("update the release notes")


PEOPLE = ("Sarah", "Michael", "Priya", "Tom", "Elena", "David", "Aisha", "Lukas")
DEADLINES = ("by Friday", "before the next sync", "by the end of the week", "by Monday", "tomorrow", "next week",
             "by the end of the month", "before the launch")
FILLER = ("Okay, thanks.", "Yeah, that makes sense.", "Right.", "Sounds good to me.", "Can everyone hear me?",
          "Sorry, I was on mute.", "Let me share my screen.", "Got it.", "Good point.", "Hmm, interesting.")
OPENERS = ("So, next up is {t}.", "Let's move on to {t}.", "The next item on the agenda is {t}.",
           "I want to spend a few minutes on {t}.")
FACT_FORMS = ("{f}", "As far as I know, {f_l}", "Just to give an update, {f_l}", "From what I saw this week, {f_l}",
              "{f} That is the main thing.")
QUESTIONS = ("Do we know when {t} will be ready?", "Is anyone blocked on {t}?", "What is the risk with {t}?",
             "Does {t} affect the customers directly?")
DECISIONS = ("We decided to go ahead with {t} as planned.", "We agreed to keep the current scope for {t}.",
             "The decision is to postpone part of {t} until the next quarter.")
COMMITMENTS = ("{p} will {task} {d}.", "{p} is going to {task} {d}.", "I'll {task} {d}.", "{p} needs to {task} {d}.",
               "Can you {task} {d}, {p}?", "Action item for {p}: {task}.", "Let's {task} {d}.",
               "We need to {task} {d}.", "{p} will follow up on {t} {d}.")

PRODUCT_LAUNCH = (
    Topic("the mobile release", (
        "The mobile release is feature complete and the testers found only a few small bugs.",
        "The crash rate on older Android phones went up after the last beta build.",
        "The app store review took four days last time, which is longer than we planned for.",
        "Offline mode works now, but syncing large folders is still slow.",
        "The login screen redesign got very good feedback in the user interviews."),
        ("fix the crash on older Android phones", "submit the build to the app store", "update the release notes",
         "write the test plan for offline mode")),
    Topic("the pricing page", (
        "The pricing page still shows the old prices for the team plan.",
        "Customers are confused by the difference between the business and the enterprise plans.",
        "The new pricing page converts better in the experiment, by a small but clear margin.",
        "Legal asked us to add the tax information next to every price."),
        ("update the prices for the team plan", "rewrite the plan comparison table", "ask legal to review the tax wording")),
    Topic("the launch campaign", (
        "The launch campaign starts with a blog post and an email to all existing customers.",
        "The video for the launch is almost done, only the voice over is missing.",
        "Our press contacts want a demo at least one week before the announcement.",
        "The budget for paid ads is smaller than last year."),
        ("send the press kit to the journalists", "finish the voice over for the launch video",
         "schedule the demo for the press", "draft the announcement email")),
    Topic("customer support readiness", (
        "Support needs updated help articles before the launch, otherwise the queue will explode.",
        "The support team is two people short because of holidays.",
        "Most tickets last month were about billing and password resets."),
        ("write the help articles for the new features", "train the support team on the new plans",
         "set up the billing macros in the help desk")),
)

ENGINEERING_SYNC = (
    Topic("last week's outage", (
        "The outage on Tuesday lasted about forty minutes and affected the European customers.",
        "The root cause was a database migration that locked the orders table.",
        "Our alerts fired, but the on call engineer was paged ten minutes late.",
        "We restored service by rolling back the migration."),
        ("write the postmortem for the outage", "add a lock timeout to every migration",
         "fix the paging delay in the alerting setup")),
    Topic("the database upgrade", (
        "The database upgrade to the new major version is tested in staging.",
        "The upgrade needs about thirty minutes of read only mode.",
        "Two of our reporting queries got much slower on the new version."),
        ("plan the maintenance window for the upgrade", "tune the two slow reporting queries",
         "tell the customers about the read only window")),
    Topic("hiring", (
        "We have three open positions for backend engineers and one for a designer.",
        "The take home exercise is too long, several candidates dropped out.",
        "The new interview loop takes two weeks instead of four."),
        ("shorten the take home exercise", "review the designer candidates", "update the job descriptions")),
    Topic("the security review", (
        "The security review found that some internal services still use old certificates.",
        "Penetration testing is booked for the first week of next month.",
        "Two dependencies have known vulnerabilities that we have not patched yet."),
        ("rotate the old certificates", "patch the vulnerable dependencies", "prepare the scope for the penetration test")),
    Topic("the on call rotation", (
        "The on call rotation is uneven, some people were paged three weekends in a row.",
        "Most pages at night are about disk space on the log servers."),
        ("rebalance the on call rotation", "add disk space alerts with a longer warning time")),
)

MEETINGS = {"product-launch": PRODUCT_LAUNCH, "engineering-sync": ENGINEERING_SYNC}


def meeting_sentences(topics: tuple[Topic, ...], words: int, seed: int = 7) -> list[str]:
    """About `words` words of meeting talk over `topics`, in agenda order (the agenda repeats for long meetings)."""
    return [line for line, _ in meeting_lines(topics, words, seed)]


def meeting_lines(topics: tuple[Topic, ...], words: int, seed: int = 7) -> list[tuple[str, str]]:
    """meeting_sentences with what each one is: opener, fact, filler, question, decision or commitment."""
    rng = random.Random(seed)
    out = [("Good morning everyone, thanks for joining.", "opener"), ("Let's get started, we have a full agenda today.", "opener")]
    count = sum(len(s.split()) for s, _ in out)
    per_topic = max(60, words // max(1, len(topics)))
    while count < words:
        for topic in topics:
            done = 0
            said = [(rng.choice(OPENERS).format(t=topic.name), "opener")]
            tasks = rng.sample(topic.tasks, len(topic.tasks))
            while done < per_topic and count + done < words:
                roll = rng.random()
                if roll < 0.50:
                    fact = rng.choice(topic.facts)
                    line, kind = rng.choice(FACT_FORMS).format(f=fact, f_l=fact[0].lower() + fact[1:]), "fact"
                elif roll < 0.72:
                    line, kind = rng.choice(FILLER), "filler"
                elif roll < 0.82:
                    line, kind = rng.choice(QUESTIONS).format(t=topic.name), "question"
                elif roll < 0.88:
                    line, kind = rng.choice(DECISIONS).format(t=topic.name), "decision"
                elif tasks:  # each task is taken on once per visit of the topic
                    line, kind = rng.choice(COMMITMENTS).format(p=rng.choice(PEOPLE), task=tasks.pop(),
                                                               d=rng.choice(DEADLINES), t=topic.name), "commitment"
                else:
                    continue
                said.append((line[0].upper() + line[1:], kind))
                done += len(line.split())
            out += said
            count += sum(len(s.split()) for s, _ in said)
            if count >= words:
                break
    out += [("Thanks everyone, that's all for today.", "filler"), ("See you next week.", "filler")]
    return out


def as_segments(sentences: list[str], seed: int = 7) -> list[dict[str, Any]]:
    """Sentences as transcript segments (wire shape) of one to three sentences, ~2.6 words a second, short pauses."""
    rng = random.Random(seed)
    segments, at, i = [], 0, 0
    while i < len(sentences):
        take = rng.choice((1, 2, 2, 3))
        text = " ".join(sentences[i:i + take])
        length = int(len(text.split()) / 2.6 * 1000)
        segments.append({"text": text, "startMs": at, "endMs": at + length})
        at += length + rng.randint(200, 900)
        i += take
    return segments


def meeting(name: str, words: int, seed: int = 7) -> list[dict[str, Any]]:
    """A generated meeting (MEETINGS' name) of about `words` words as transcript segments."""
    return as_segments(meeting_sentences(MEETINGS[name], words, seed), seed)
