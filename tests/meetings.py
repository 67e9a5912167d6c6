"""Generated meeting transcripts (no audio): agenda topics talked through by named people, with the small talk,
decisions, questions and commitments real meetings have, as transcript segments of 6-12 s. Seeded, so a
figure or a sample summary can be made again. Used by the summary benchmark and the summary samples. Also
a few short meetings written by hand, with the words each is about (SHORT_MEETINGS: the keywords' tests)."""

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


@dataclass(frozen=True)
class ShortMeeting:
    title: str
    lines: tuple[str, ...]  # what was said, in order
    subject: frozenset[str]  # the words it is about, planted: its keywords should name them


# Short meetings (a few minutes, 240-290 words) written as people talk: the subject said a few times, some of
# it once ("Stripe", "CSV"), among the verbs every meeting has ("finish", "look", "work", "need", "think").
SHORT_MEETINGS = {
    "standup": ShortMeeting("a stand-up: the invoice export and the Stripe webhook", (
        "Okay, let's start, I think everyone is here.",
        "So yesterday I looked at the invoice export again.",
        "The export still times out for customers with more than ten thousand invoices.",
        "I think the problem is that we build the whole CSV file in memory before we send it.",
        "I need to finish the streaming version today, and then the rest should be quick.",
        "Did you try the export with the big test account?",
        "Yes, I tried it this morning and it took almost four minutes before the timeout.",
        "Okay, so we need the streaming export before the release, that's clear.",
        "On my side I worked on the Stripe webhook.",
        "The webhook sometimes arrives twice, and then we create two invoices for the same payment.",
        "I think we need to store the event id and ignore a webhook we have already seen.",
        "That should not take long, I can finish it tomorrow.",
        "Do we need to clean up the duplicate invoices that are already there?",
        "Yes, there are about forty duplicate invoices from last month.",
        "I'll write a small script to find them, and then finance needs to look at the list.",
        "Good, let's not delete anything before finance has looked at it.",
        "Anything else? I'm still working on the onboarding emails, nothing new there.",
        "Okay, then I think we're done, let's finish here and get back to work.",
        "The rest of the week should be quieter.",
        "Thanks everyone.",
    ), frozenset("invoices export webhook stripe csv".split())),
    "design": ShortMeeting("a design review of the onboarding flow", (
        "Hi everyone, thanks for making time for this.",
        "I want to walk you through the new onboarding flow before we start building it.",
        "Right now a new user lands on an empty dashboard and doesn't know what to do next.",
        "In the new flow they first see a short checklist with three steps: connect a calendar, invite a teammate, and record a first meeting.",
        "Each step of the checklist opens a small tooltip that explains it.",
        "I like the checklist, but I think three steps is already a lot for the first minute.",
        "Could we make the calendar step optional?",
        "We can, but the calendar is what makes the rest of the product useful.",
        "Without the calendar we can't join meetings on their own.",
        "Okay, fair enough, let's keep the calendar step and make invite a teammate optional instead.",
        "What about the tooltips on mobile? They cover half of the screen on a small phone.",
        "Good point, on mobile we'll show the tooltip as a bottom sheet instead.",
        "And dark mode? The mockups are all in light mode.",
        "The colors for dark mode are in the design system already, so the checklist should just work.",
        "I'll still check the contrast of the progress bar in dark mode.",
        "Let's also track how many users finish the checklist, so we can see whether it helps.",
        "I think we need an event for every step, not only for the whole checklist.",
        "Yes, one event per step, and one when someone closes the checklist without finishing.",
        "So the plan is: calendar step required, invite optional, bottom sheet on mobile, events for every step.",
        "I'll update the mockups by Thursday and then we can start.",
        "Great, thanks, that was useful.",
    ), frozenset("checklist tooltip calendar dark mode mockups".split())),
    "offsite": ShortMeeting("choosing the venue of the team offsite", (
        "Okay, so this is just a quick one about the team offsite in September.",
        "We have two options for the venue, one in Lisbon and one in Porto.",
        "The Lisbon venue is bigger and closer to the airport, but it costs about twenty percent more.",
        "The Porto venue has a nicer garden and the hotel is right next to it.",
        "I think for a team of thirty people the Porto venue is big enough.",
        "What about flights? Are flights to Porto more expensive?",
        "A bit, most people would have to change planes, flights to Lisbon are direct from almost everywhere.",
        "Then maybe Lisbon is better, changing planes for a three day offsite is annoying.",
        "And the budget? Do we know the budget yet?",
        "Finance approved the budget last week, it covers the venue, the hotel, and the flights, but not the catering.",
        "So we need to find money for the catering somewhere.",
        "The Lisbon venue includes catering for lunch, so that would solve part of it.",
        "Okay, that's a good argument for Lisbon.",
        "Let's go with Lisbon then, unless someone has a strong reason for Porto.",
        "No, Lisbon is fine with me.",
        "I'll ask the venue to hold the dates and send us a contract.",
        "Someone needs to collect everyone's travel dates for the flights.",
        "I can do that, I'll send a form today and give people until Friday.",
        "And let's think about the agenda for the offsite later, we don't need to decide that now.",
        "Good, then that's it, thanks.",
    ), frozenset("offsite venue lisbon porto flights catering budget".split())),
    "customer": ShortMeeting("a customer's data warehouse migration", (
        "Thanks for joining, we wanted to talk about your move to the new data warehouse.",
        "Sure, so we're moving all our reporting from the old Postgres replica to Snowflake.",
        "The migration should be done by the end of the quarter.",
        "What we need from you is a way to get the meeting data into Snowflake every night.",
        "Right now we have a CSV export and a REST API, and we're working on a Snowflake connector.",
        "When is the connector going to be ready?",
        "The connector is in beta, we can give you access next week.",
        "Does the connector handle deleted records? Our churn report needs to know when a customer deletes an account.",
        "Good question. The connector sends a deleted flag, so the churn report can filter on it.",
        "And how far back does the first sync go? We need at least two years of history for the churn report.",
        "The first sync copies everything, so all your history goes over in one go.",
        "That might take a few hours for an account of your size, so we'd run it over a weekend.",
        "That works for us. What about the dashboard? Our finance team uses the usage dashboard every Monday.",
        "The dashboard stays as it is, nothing changes there.",
        "Okay, good. Then the next step is the beta access for the Snowflake connector.",
        "We'll send the beta invite on Monday, together with the documentation for the deleted flag.",
        "And we'll plan the first sync with your data team for a weekend in the next two weeks.",
        "Perfect, thank you, that answers most of our questions.",
    ), frozenset("snowflake connector churn report deleted flag dashboard".split())),
}
