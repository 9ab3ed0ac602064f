"""``geo``: a small bundled task set for a real env LLM, written by us from common geographic knowledge.

The synthetic world (:mod:`promptr1.envs.synthetic`) is a stand-in: its ``sim`` expert follows rules we
wrote. This set is for a *real* language model behind the env (``env_llm="smollm2"``, a llama.cpp
server, an API), where the question is whether an agent's phrasing helps the model answer.

Facts: :data:`COUNTRIES`, one row per country (name, capital, accepted spellings of the capital, and a
landmark or natural site for some). The rows are common knowledge typed in by us, not taken from a
dataset. Questions are generated from them by :class:`GeoTasks` from templates we wrote:

* ``story``: a short story that names a distractor city before the asked country
  ("After visiting Ankara, Ana flew on to Belgium's capital. Which city did she fly to?"). One
  sub-question answers it: "What is the capital of Belgium?".
* ``landmark``: two hops ("What is the capital of the country where Petra is located?"): first the
  country of the landmark, then its capital.

On the 91 test questions SmolLM2-135M-Instruct (greedy) answers 45% of the stories and 23% of the
landmark questions as written, and 72% and 62% when asked the plain sub-questions with the right
intermediate filled in (``python benchmarks/bench_real_llm.py`` prints this probe first; ``docs/geo.md``):
the phrasing of the prompt matters to this model, which is what an agent can learn.

Splits are by country (a stable hash): no country, capital or landmark of the test split appears in a
training question, so a policy cannot pass the test by remembering training answers.

Every task's ``meta`` holds the plan an expert agent would follow: ``subquestions`` (the prompts, in
order) and ``expect`` (what each reply must contain for the plan to be on track).
:func:`demonstration` turns it into agent turns for the supervised warm start, and
:func:`promptr1.agents.sft.sft_examples` drops a demonstration whose real replies do not say what
``expect`` says (a demonstration that answers right after a wrong reply would teach the agent to
ignore the replies).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from promptr1.envs.tasks import ListTaskSource, Task

from promptr1.core.tags import answer_turn, prompt_turn

__all__ = ["COUNTRIES", "Country", "GeoTasks", "demonstration", "load_geo"]


class Country(NamedTuple):
    name: str
    capital: str
    spellings: tuple[str, ...] = ()  # other accepted spellings of the capital
    landmark: str = ""  # a site in the country named without its city or country


#: The facts (ours, common knowledge). Capitals are the seats of government.
COUNTRIES: tuple[Country, ...] = (
    Country("France", "Paris", (), "the Eiffel Tower"), Country("Germany", "Berlin", (), "the Brandenburg Gate"),
    Country("Italy", "Rome", (), "the Colosseum"), Country("Spain", "Madrid", (), "the Sagrada Familia"),
    Country("Portugal", "Lisbon"), Country("United Kingdom", "London", (), "Stonehenge"),
    Country("Ireland", "Dublin"), Country("Netherlands", "Amsterdam"), Country("Belgium", "Brussels"),
    Country("Switzerland", "Bern", ("Berne",), "the Matterhorn"), Country("Austria", "Vienna"),
    Country("Poland", "Warsaw"), Country("Czech Republic", "Prague"), Country("Hungary", "Budapest"),
    Country("Greece", "Athens", (), "the Acropolis"), Country("Turkey", "Ankara", (), "Cappadocia"),
    Country("Russia", "Moscow", (), "Lake Baikal"), Country("Ukraine", "Kyiv", ("Kiev",)),
    Country("Sweden", "Stockholm"), Country("Norway", "Oslo"), Country("Finland", "Helsinki"),
    Country("Denmark", "Copenhagen"), Country("Iceland", "Reykjavik", ("Reykjavík",)),
    Country("Egypt", "Cairo", (), "the Great Pyramid of Giza"), Country("Kenya", "Nairobi", (), "the Maasai Mara"),
    Country("Nigeria", "Abuja"), Country("South Africa", "Pretoria", (), "Table Mountain"),
    Country("Morocco", "Rabat"), Country("Ethiopia", "Addis Ababa"), Country("Ghana", "Accra"),
    Country("Japan", "Tokyo", (), "Mount Fuji"), Country("China", "Beijing", ("Peking",), "the Great Wall"),
    Country("India", "New Delhi", (), "the Taj Mahal"), Country("South Korea", "Seoul"),
    Country("Thailand", "Bangkok"), Country("Vietnam", "Hanoi", (), "Ha Long Bay"),
    Country("Indonesia", "Jakarta", (), "Borobudur"), Country("Philippines", "Manila"),
    Country("Malaysia", "Kuala Lumpur"), Country("Pakistan", "Islamabad"), Country("Iran", "Tehran"),
    Country("Iraq", "Baghdad"), Country("Saudi Arabia", "Riyadh"), Country("Jordan", "Amman", (), "Petra"),
    Country("Cambodia", "Phnom Penh", (), "Angkor Wat"), Country("Nepal", "Kathmandu", (), "Mount Everest"),
    Country("Australia", "Canberra", (), "the Great Barrier Reef"), Country("New Zealand", "Wellington"),
    Country("Canada", "Ottawa", (), "Niagara Falls"),
    Country("United States", "Washington, D.C.", ("Washington",), "the Grand Canyon"),
    Country("Mexico", "Mexico City", (), "Chichen Itza"), Country("Brazil", "Brasilia", ("Brasília",), "the Amazon"),
    Country("Argentina", "Buenos Aires"), Country("Chile", "Santiago", (), "Easter Island"),
    Country("Peru", "Lima", (), "Machu Picchu"), Country("Colombia", "Bogota", ("Bogotá",)),
    Country("Venezuela", "Caracas", (), "Angel Falls"), Country("Cuba", "Havana"), Country("Bangladesh", "Dhaka"),
    Country("Afghanistan", "Kabul"), Country("Syria", "Damascus"), Country("Lebanon", "Beirut"),
    Country("Romania", "Bucharest"), Country("Bulgaria", "Sofia"), Country("Serbia", "Belgrade"),
    Country("Croatia", "Zagreb"), Country("Tanzania", "Dodoma", (), "Mount Kilimanjaro"),
    Country("Uganda", "Kampala"), Country("Zimbabwe", "Harare", (), "Victoria Falls"), Country("Senegal", "Dakar"),
    Country("Mongolia", "Ulaanbaatar", ("Ulan Bator",)), Country("Qatar", "Doha"), Country("Kuwait", "Kuwait City"),
    Country("Oman", "Muscat"), Country("Libya", "Tripoli"), Country("Tunisia", "Tunis"),
    Country("Algeria", "Algiers"), Country("Sudan", "Khartoum"), Country("Somalia", "Mogadishu"),
    Country("Angola", "Luanda"), Country("Zambia", "Lusaka"), Country("Mozambique", "Maputo"),
    Country("Madagascar", "Antananarivo"), Country("Mali", "Bamako", (), "Timbuktu"), Country("Rwanda", "Kigali"),
    Country("Laos", "Vientiane"), Country("Singapore", "Singapore"), Country("North Korea", "Pyongyang"),
    Country("Uzbekistan", "Tashkent", (), "Samarkand"), Country("Georgia", "Tbilisi"),
    Country("Armenia", "Yerevan"), Country("Azerbaijan", "Baku"), Country("Belarus", "Minsk"),
    Country("Lithuania", "Vilnius"), Country("Latvia", "Riga"), Country("Estonia", "Tallinn"),
    Country("Slovakia", "Bratislava"), Country("Slovenia", "Ljubljana", (), "Lake Bled"),
    Country("Albania", "Tirana"), Country("Ecuador", "Quito", (), "the Galapagos Islands"),
    Country("Paraguay", "Asuncion", ("Asunción",)), Country("Uruguay", "Montevideo"),
    Country("Jamaica", "Kingston"), Country("Panama", "Panama City"),
    Country("Costa Rica", "San Jose", ("San José",)), Country("Guatemala", "Guatemala City", (), "Tikal"),
    Country("Honduras", "Tegucigalpa"), Country("Fiji", "Suva"), Country("Malta", "Valletta"),
    Country("Cyprus", "Nicosia"), Country("Scotland", "Edinburgh", (), "Loch Ness"),
)

# Story templates (ours): {name} travels, a distractor city comes first, the asked country second.
_STORIES = (
    "After visiting {other}, {name} flew on to {country}'s capital. Which city did {pron} fly to?",
    "{name} left {other} by train and arrived in the capital of {country} two days later. In which city "
    "did {pron} arrive?",
    "{name} grew up in {other} but now works in the capital city of {country}. Which city does {pron} work in?",
)
_NAMES = (("Ana", "she"), ("Tom", "he"), ("Lena", "she"), ("Omar", "he"), ("Mei", "she"), ("Ravi", "he"))
KINDS = ("story", "landmark")
SPLITS = ("train", "test")


def _hash(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def split_of(country: Country) -> str:
    """``test`` for about a third of the countries (a stable hash of the name), ``train`` for the rest."""
    return "test" if _hash("geo-split", country.name) % 3 == 0 else "train"


def _answers(c: Country) -> tuple[str, ...]:
    return (c.capital, *c.spellings)


def _story(c: Country, i: int, pool: Sequence[Country]) -> Task:
    h = _hash("story", c.name, i)
    others = [o for o in pool if o.name != c.name]
    other = others[h % len(others)]
    name, pron = _NAMES[(h >> 8) % len(_NAMES)]
    q = _STORIES[i % len(_STORIES)].format(other=other.capital, name=name, pron=pron, country=c.name)
    sub = f"What is the capital of {c.name}?"
    meta = {"kind": "story", "country": c.name, "subquestions": [sub], "expect": [c.capital],
            "distractor": other.capital}
    return Task(q, _answers(c), ability="qa", data_source="geo-story", id=f"geo-story-{h % 16**10:010x}",
                meta=meta)


def _landmark(c: Country) -> Task:
    q = f"What is the capital of the country where {c.landmark} is located?"
    subs = [f"In which country is {c.landmark}?", f"What is the capital of {c.name}?"]
    meta = {"kind": "landmark", "country": c.name, "landmark": c.landmark, "subquestions": subs,
            "expect": [c.name, c.capital]}
    return Task(q, _answers(c), ability="qa", data_source="geo-landmark",
                id=f"geo-landmark-{_hash('landmark', c.name) % 16**10:010x}", meta=meta)


class GeoTasks(ListTaskSource):
    """The ``geo`` tasks of one split: ``stories`` story questions per country, a two-hop question per landmark.

    >>> test = GeoTasks("test")
    >>> len(test) > 60, {t.meta["kind"] for t in test} == {"story", "landmark"}
    (True, True)
    >>> {t.meta["country"] for t in test} & {t.meta["country"] for t in GeoTasks("train")}
    set()
    """

    def __init__(self, split: str = "train", kinds: Sequence[str] | str = KINDS, stories: int = 2) -> None:
        if split not in SPLITS:
            raise ValueError(f"geo split must be one of {SPLITS}, got {split!r}.")
        kinds = tuple(kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"geo kinds must be among {KINDS}, got {list(kinds)}.")
        if not 1 <= stories <= len(_STORIES):
            raise ValueError(f"stories must be between 1 and {len(_STORIES)}, got {stories}.")
        pool = [c for c in COUNTRIES if split_of(c) == split]
        tasks: list[Task] = []
        for c in pool:
            if "story" in kinds:
                tasks += [_story(c, i, pool) for i in range(stories)]
            if "landmark" in kinds and c.landmark:
                tasks.append(_landmark(c))
        super().__init__(tasks, name=f"geo:{split}")
        self.split = split


def demonstration(task: Task) -> list[str]:
    """The agent turns that follow a ``geo`` task's plan: its sub-questions in order, then the answer.

    >>> t = GeoTasks("train", kinds="landmark")[0]
    >>> turns = demonstration(t)
    >>> len(turns), "<interaction_prompt>In which country is" in turns[0], turns[-1].endswith(f"<answer>{t.answers[0]}</answer>")
    (3, True, True)
    """
    meta = task.meta if isinstance(task.meta, Mapping) else {}
    subs, expect = meta.get("subquestions"), meta.get("expect")
    if not subs or not expect or len(subs) != len(expect):
        raise ValueError(f"demonstration() needs a geo task (meta 'subquestions' and 'expect'), got task {task.id!r}.")
    turns, said = [], ""
    for sub, want in zip(subs, expect):
        need = sub[0].lower() + sub[1:].rstrip("?")
        turns.append(prompt_turn(f"{said} I need to know {need}.".strip(), sub))
        said = f"The reply says {want}."
    turns.append(answer_turn(said, task.answers[0]))
    return turns


def load_geo(args: str = "", *, split: str = "train", seed: int = 0) -> GeoTasks:
    """The ``geo`` task source: ``"geo[:SPLIT[:KIND,KIND]]"``."""
    parts = args.split(":") if args else []
    sp = parts[0] if parts and parts[0] else split
    if len(parts) > 1 and parts[1]:
        return GeoTasks(sp, kinds=parts[1])
    return GeoTasks(sp)
